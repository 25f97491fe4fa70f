//! Interop: metadata signed by `upkeep_server::tuf` is refreshed and a target downloaded and
//! verified by python-tuf's `ngclient.Updater` (a stock TUF client), served over real HTTP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::num::NonZeroU64;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};
use upkeep_server::tuf::{RepoKeys, RoleVersions, TargetEntry, root, sign_repository};

const CLIENT: &str = r#"
import sys, tempfile
from tuf.ngclient import Updater
base, root_path, name = sys.argv[1], sys.argv[2], sys.argv[3]
updater = Updater(metadata_dir=tempfile.mkdtemp(), metadata_base_url=base + "/metadata/",
                  target_base_url=base + "/targets/", target_dir=tempfile.mkdtemp(),
                  bootstrap=open(root_path, "rb").read())
updater.refresh()
info = updater.get_targetinfo(name)
if info is None:
    sys.exit("no such target: " + name)
path = updater.download_target(info)
sys.stdout.write(open(path, "rb").read().decode())
"#;

#[test]
fn python_tuf_verifies_our_repository() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tmp");
    let payload = b"crm-server 5.3.1".to_vec();
    let sha = hex::encode(Sha256::digest(&payload));
    let name = "crm-server_5.3.1_linux-x86_64.tar.gz";
    let keys = RepoKeys::generate().expect("keys");
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    let one = NonZeroU64::MIN;
    let (root_json, files) = runtime.block_on(async {
        let root_json = root(&keys, one, later).await.expect("root");
        let entry = TargetEntry {
            name: name.into(),
            sha256: sha.clone(),
            length: payload.len() as u64,
            custom: HashMap::new(),
        };
        let versions = RoleVersions {
            targets: one,
            snapshot: one,
            timestamp: one,
            targets_expires: later,
            snapshot_expires: later,
            timestamp_expires: later,
        };
        let files = sign_repository(&root_json, &keys, &[entry], versions)
            .await
            .expect("sign");
        (root_json, files)
    });
    std::fs::create_dir_all(dir.path().join("metadata")).expect("dir");
    std::fs::create_dir_all(dir.path().join("targets")).expect("dir");
    for (file, bytes) in &files {
        std::fs::write(dir.path().join("metadata").join(file), bytes).expect("write");
    }
    std::fs::write(dir.path().join("targets").join(format!("{sha}.{name}")), &payload).expect("write");
    let root_path = dir.path().join("trusted-root.json");
    std::fs::write(&root_path, &root_json).expect("write");

    // A plain static file server, as a CDN would be.
    let mut server = Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("banner");
    let port = line
        .split("port ")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .expect("port in banner");
    let base = format!("http://127.0.0.1:{port}");

    let out = Command::new("python3")
        .args(["-c", CLIENT, &base])
        .arg(&root_path)
        .arg(name)
        .output()
        .expect("python-tuf");
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "python-tuf refused the repository (install it with `pip install tuf`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "crm-server 5.3.1");
}
