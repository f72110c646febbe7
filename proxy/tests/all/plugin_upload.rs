//! An uploaded module against the plugin file watcher: an upload of a file-backed plugin stays until the file
//! itself changes, rollback returns to the file's version, and a change to the file (even a touch) wins again.

use crate::plugins::{marking_plugin, reqwest_put};
use crate::support::*;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn config(app: &TestUpstream, mark: &Path, probe: &Path) -> String {
    reverse_config(&quoted(&[app]), "").replace("upstream = \"app\"\n", "upstream = \"app\"\nfilters = [\"mark\"]\n")
        + &format!(
            "\n[[listener]]\nname = \"probe\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nfilters = [\"probe\"]\n\
             \n[[plugin]]\nname = \"mark\"\nwasm = \"{}\"\n\n[[plugin]]\nname = \"probe\"\nwasm = \"{}\"\n",
            mark.display(),
            probe.display()
        )
}

/// Writes `bytes` and gives the file a modification time of its own (`step` seconds ahead), so the change is
/// seen even where the clock or the file system is coarse.
fn write_at(path: &Path, bytes: &[u8], step: u64) -> std::io::Result<()> {
    std::fs::write(path, bytes)?;
    std::fs::File::options().write(true).open(path)?.set_modified(SystemTime::now() + Duration::from_secs(step))
}

async fn mark(addr: std::net::SocketAddr) -> Result<String, String> {
    Ok(get(addr, "/").await?.header("x-wat").to_string())
}

/// Polls `addr` until responses carry `x-wat: want`, for at most 60 s (only a hang takes that long).
async fn wait_for_mark(addr: std::net::SocketAddr, want: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = mark(addr).await?;
        if seen == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("still x-wat {seen:?}, waiting for {want:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_upload_of_a_file_backed_plugin_stays_until_the_file_changes() -> TestResult {
    let app = TestUpstream::start("app").await;
    let dir = tempfile::tempdir()?;
    let (mark_file, probe_file) = (dir.path().join("mark.wasm"), dir.path().join("probe.wasm"));
    std::fs::write(&mark_file, marking_plugin("file"))?;
    std::fs::write(&probe_file, marking_plugin("p0"))?;
    let p = Portico::start(&config(&app, &mark_file, &probe_file)).await;
    let (web, probe) = (p.addr("web").await, p.addr("probe").await);
    assert_eq!(mark(web).await?, "file");

    let uploaded = reqwest_put(p.admin, "/plugins/mark", marking_plugin("upload")).await?;
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    // The upload serves through at least 10 s and two complete passes of the file watcher (seen through the
    // probe plugin, whose file changes twice, the second time after the watcher took the first change).
    let since = Instant::now();
    for (step, value) in [(10, "p1"), (20, "p2")] {
        write_at(&probe_file, &marking_plugin(value), step)?;
        wait_for_mark(probe, value).await?;
        assert_eq!(mark(web).await?, "upload", "the watcher undid the upload");
    }
    while since.elapsed() < Duration::from_secs(10) {
        assert_eq!(mark(web).await?, "upload", "the watcher undid the upload");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listed = get(p.admin, "/plugins").await?.json();
    let slot = listed.as_array().and_then(|a| a.iter().find(|s| s["name"] == "mark")).cloned().unwrap_or_default();
    assert_eq!(slot["origin"], "upload", "{listed}");

    // Rollback goes back to what ran before the upload: the file's module.
    assert_eq!(send(p.admin, "POST", "/plugins/mark/rollback", &[], "").await?.status, 200);
    assert_eq!(mark(web).await?, "file");

    // A changed file takes effect.
    write_at(&mark_file, &marking_plugin("file-2"), 30)?;
    wait_for_mark(web, "file-2").await?;

    // So does a touch after an upload: the file's module comes back.
    let uploaded = reqwest_put(p.admin, "/plugins/mark", marking_plugin("upload-2")).await?;
    assert_eq!(uploaded.status, 200, "{:?}", uploaded.body);
    assert_eq!(mark(web).await?, "upload-2");
    std::fs::File::options().write(true).open(&mark_file)?.set_modified(SystemTime::now() + Duration::from_secs(40))?;
    wait_for_mark(web, "file-2").await?;
    Ok(())
}
