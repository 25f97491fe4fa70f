//! Release notes: Markdown rendered so that nothing in them can run or load in the console.
//! Raw HTML is shown as text, and links and images keep only web, mail and relative addresses.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag};

pub(crate) fn render(markdown: &str) -> maud::Markup {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS;
    let events = Parser::new_ext(markdown, options).map(|event| match event {
        // Shown, not interpreted: `<script>` in notes reads as the text `<script>`.
        Event::Html(text) | Event::InlineHtml(text) => Event::Text(text),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Image {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        other => other,
    });
    let mut html = String::new();
    pulldown_cmark::html::push_html(&mut html, events);
    maud::PreEscaped(html)
}

/// `javascript:`, `data:` and other schemes become `#`.
fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
    let lower = url.trim().to_ascii_lowercase();
    let scheme_end = lower.find(':');
    let path_start = lower.find(['/', '?', '#']).unwrap_or(lower.len());
    let allowed = match scheme_end {
        // No scheme before the path: relative.
        Some(colon) if colon < path_start => ["http:", "https:", "mailto:"].iter().any(|s| lower.starts_with(s)),
        _ => true,
    };
    if allowed { url } else { CowStr::Borrowed("#") }
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn markdown_is_rendered() {
        let html = render("# New\n\n* **faster** sync\n\n[docs](https://example.com/x)").into_string();
        assert!(html.contains("<h1>New</h1>"), "{html}");
        assert!(html.contains("<strong>faster</strong>"), "{html}");
        assert!(html.contains(r#"<a href="https://example.com/x">docs</a>"#), "{html}");
    }

    #[test]
    fn html_and_script_links_do_not_survive() {
        let html = render("<script>alert(1)</script>\n\nhi <img src=x onerror=alert(1)>\n\n[x](javascript:alert(1)) [y](JaVaScRiPt:alert(1)) ![i](data:text/html,hi)").into_string();
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.to_ascii_lowercase().contains("javascript:"), "{html}");
        assert!(!html.contains("data:text"), "{html}");
    }

    #[test]
    fn relative_and_mail_links_stay() {
        let html = render("[a](/downloads) [b](notes.html#x) [c](mailto:support@example.com)").into_string();
        assert!(html.contains(r#"href="/downloads""#));
        assert!(html.contains(r#"href="notes.html#x""#));
        assert!(html.contains(r#"href="mailto:support@example.com""#));
    }
}
