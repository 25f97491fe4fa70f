//! What the CLI prints: aligned plain-text tables, `--json`, and the small formatting helpers
//! (times, sizes) they share.
//!
//! Everything shown in a table or a line comes from the server, and some of it (hostnames,
//! messages) was reported by workstations, so text is made printable before it reaches the
//! terminal: a stray newline would break the one-line-per-row promise, and an escape sequence
//! could rewrite what the administrator sees.

use std::io::Write;

use serde::Serialize;

/// Column separator: two spaces keep columns apart even when a cell is a single character.
const GAP: &str = "  ";

/// A plain table: a header row and aligned columns, padded with spaces, no borders.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Option<Vec<String>>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table whose first line names the columns.
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: Some(header.iter().map(|h| printable(h)).collect()),
            rows: Vec::new(),
        }
    }

    /// A table without a header line, for log-like output that is still worth aligning.
    pub fn headerless() -> Self {
        Table::default()
    }

    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rows
            .push(cells.into_iter().map(|c| printable(c.as_ref())).collect());
    }

    /// The table as text, one line per row, each ending in a newline. The last cell of a line is
    /// not padded, so lines carry no trailing spaces.
    pub fn render(&self) -> String {
        let lines: Vec<&Vec<String>> = self.header.iter().chain(&self.rows).collect();
        let columns = lines.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line.iter()) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in lines {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                text.extend(std::iter::repeat_n(' ', pad));
            }
            // Short rows and empty last cells would otherwise leave padding at the end.
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Aligned lines for output that arrives in batches (`upkeep events --follow`): each batch is
/// padded to the widest cell seen so far, so columns line up from one batch to the next as long
/// as no wider cell comes along, and shift right at most once per new width.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    widths: Vec<usize>,
}

impl Columns {
    /// The rows as text, one line per row, each ending in a newline.
    pub fn render(&mut self, rows: &[Vec<String>]) -> String {
        let rows: Vec<Vec<String>> = rows
            .iter()
            .map(|row| row.iter().map(|c| printable(c)).collect())
            .collect();
        for row in &rows {
            if self.widths.len() < row.len() {
                self.widths.resize(row.len(), 0);
            }
            for (width, cell) in self.widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                line.push_str(cell);
                let pad = self.widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` with every control character (newline, tab, escape, …) replaced by a space.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Writes `text` to stdout, adding a final newline when it lacks one.
///
/// A closed pipe (`upkeep events | head`) is not an error: the reader has what it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    emit_while_read(text).map(|_| ())
}

/// Like [`emit`], for output that goes on: `Ok(false)` when nobody reads stdout any more (the
/// pipe was closed), so the caller can stop instead of producing output for no one.
pub fn emit_while_read(text: &str) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    let result = out.write_all(text.as_bytes()).and_then(|()| {
        if text.ends_with('\n') {
            Ok(())
        } else {
            out.write_all(b"\n")
        }
    });
    match result.and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
}

/// Prints `value` as pretty JSON, exactly as its protocol type serializes.
pub fn emit_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    emit(&serde_json::to_string_pretty(value)?)
}

/// An RFC 3339 time from the server, shown in the local time zone to the second. Anything that
/// does not parse is shown as it came, so nothing is hidden.
pub fn time(rfc3339: &str) -> String {
    match rfc3339.parse::<jiff::Timestamp>() {
        Ok(ts) => ts
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => rfc3339.to_owned(),
    }
}

/// How far `at` is from `now`, for people: `in 2d 3h`, `in 5m`, `3h ago`, `now`.
///
/// At most two units, the larger first; the smaller is rounded to the nearest (`in 1h 59m 59s`
/// reads `in 2h`), and a zero second unit is left out (`in 2d`, not `in 2d 0h`). Seconds show
/// only under a minute.
pub fn countdown(at: jiff::Timestamp, now: jiff::Timestamp) -> String {
    let ms = i128::from(at.as_millisecond()) - i128::from(now.as_millisecond());
    // Rounded to the nearest second; i128 so no two timestamps can overflow the difference.
    let seconds = (ms.unsigned_abs() + 500) / 1000;
    if seconds == 0 {
        return "now".to_owned();
    }
    let span = span(seconds);
    if ms > 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// `seconds` (more than 0) in the two largest units: `45s`, `5m`, `2h 5m`, `3d 4h`.
fn span(seconds: u128) -> String {
    if seconds < 60 {
        return format!("{seconds}s");
    }
    let minutes = (seconds + 30) / 60;
    if minutes < 60 {
        return format!("{minutes}m");
    }
    let two = |big: u128, big_unit: char, small: u128, small_unit: char| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit} {small}{small_unit}")
        }
    };
    if minutes < 24 * 60 {
        return two(minutes / 60, 'h', minutes % 60, 'm');
    }
    let hours = (minutes + 30) / 60;
    two(hours / 24, 'd', hours % 24, 'h')
}

/// A byte count for people: exact below 1 KiB, one decimal in binary units above.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision loss in the cast only matters beyond 2^53 bytes, far past any artifact.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `value`, or a dash for a cell that has nothing to show.
pub fn or_dash(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() => v.to_owned(),
        _ => "-".to_owned(),
    }
}

/// At most `max` characters of `text`, ending in an ellipsis when something was cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "NOTE"]);
        table.row(["1", "demo", "first"]);
        table.row(["200", "a-longer-name", ""]);
        assert_eq!(
            table.render(),
            "ID   NAME           NOTE\n\
             1    demo           first\n\
             200  a-longer-name\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut table = Table::new(&["A", "B"]);
        table.row(["ü", "x"]);
        table.row(["ab", "y"]);
        assert_eq!(table.render(), "A   B\nü   x\nab  y\n");
    }

    #[test]
    fn table_tolerates_short_rows_and_no_header() {
        let mut table = Table::headerless();
        table.row(["a", "b", "c"]);
        table.row(["dd"]);
        assert_eq!(table.render(), "a   b  c\ndd\n");
        assert_eq!(Table::new(&["ONLY"]).render(), "ONLY\n");
    }

    #[test]
    fn table_cells_cannot_break_lines_or_emit_escapes() {
        let mut table = Table::new(&["HOST"]);
        table.row(["evil\nline\x1b[2J"]);
        assert_eq!(table.render(), "HOST\nevil line [2J\n");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn unparsable_times_are_shown_as_given() {
        assert_eq!(time("yesterday"), "yesterday");
        assert_eq!(time("2025-01-02T03:04:05Z").len(), "2025-01-02 03:04:05".len());
    }

    #[test]
    fn countdowns_read_well() {
        let now: jiff::Timestamp = "2026-05-01T12:00:00Z".parse().unwrap();
        let at = |secs: i64| now.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap();
        let cases = [
            (0, "now"),
            (45, "in 45s"),
            (-45, "45s ago"),
            (5 * 60, "in 5m"),
            (5 * 60 + 29, "in 5m"),
            (59 * 60 + 59, "in 1h"),
            (2 * 3600 + 5 * 60, "in 2h 5m"),
            (-3 * 3600, "3h ago"),
            (-(3 * 3600 + 10), "3h ago"),
            (2 * 86_400 + 3 * 3600, "in 2d 3h"),
            (2 * 86_400 + 3 * 3600 + 40 * 60, "in 2d 4h"),
            (2 * 86_400 + 5 * 60, "in 2d"),
            (-(6 * 86_400 + 23 * 3600 + 50 * 60), "7d ago"),
            (400 * 86_400, "in 400d"),
        ];
        for (secs, expected) in cases {
            assert_eq!(countdown(at(secs), now), expected, "{secs}s");
        }
        // Half a second either way still counts as now; a whole second does not.
        let ms = |ms: i64| now.checked_add(jiff::SignedDuration::from_millis(ms)).unwrap();
        assert_eq!(countdown(ms(499), now), "now");
        assert_eq!(countdown(ms(1_400), now), "in 1s");
        assert_eq!(countdown(ms(-1_600), now), "2s ago");
        assert!(countdown(jiff::Timestamp::MAX, jiff::Timestamp::MIN).starts_with("in "));
    }

    #[test]
    fn columns_line_up_across_batches() {
        let mut columns = Columns::default();
        let row = |cells: &[&str]| cells.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        assert_eq!(columns.render(&[row(&["a", "bb", "c"])]), "a  bb  c\n");
        assert_eq!(columns.render(&[row(&["dd", "e", "f\ng"])]), "dd  e   f g\n");
        assert_eq!(columns.render(&[row(&["x", "y", ""])]), "x   y\n");
        assert_eq!(columns.render(&[]), "");
    }

    #[test]
    fn truncate_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("0123456789abc", 5), "0123…");
    }
}
