//! Plugins that talk to the host as proxy-wasm C++ SDK builds do, through a real Portico: one module
//! (plugins/guest/cpp_sdk_protocol.c) registering three behaviours under three root ids from static
//! constructors, configured as three plugins that differ only in `root_id`.

use crate::support::*;
use std::path::Path;

fn module() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/tests/data/cpp_sdk_protocol.wasm").display().to_string()
}

fn listener(name: &str, filter: &str) -> String {
    format!(
        "\n[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nupstream = \"app\"\nfilters = [\"{filter}\"]\n"
    )
}

fn plugin(name: &str, root_id: &str, config: &str) -> String {
    format!(
        "\n[[plugin]]\nname = \"{name}\"\nwasm = \"{}\"\nroot_id = \"{root_id}\"\nconfig = \"{config}\"\n",
        module()
    )
}

#[tokio::test]
async fn cpp_sdk_style_plugins_find_their_root_by_id_and_act() -> TestResult {
    let app = TestUpstream::start("app").await;
    let auth = TestUpstream::start("auth").await;
    let config = reverse_config(&quoted(&[&app]), "")
        + &format!("\n[[upstream]]\nname = \"auth\"\nendpoints = [\"{}\"]\n", auth.addr)
        + &plugin("denylist", "", "bad-token other")
        + &plugin("hello", "reply", "")
        + &plugin("authz", "auth", "")
        + &plugin("stranger", "not-registered", "")
        + &listener("deny", "denylist")
        + &listener("reply", "hello")
        + &listener("authz", "authz")
        + &listener("idle", "stranger");
    let p = Portico::start(&config).await;

    // root_id = "": the factories registered under "" run; a local reply followed by 4 answers the client.
    let deny = p.addr("deny").await;
    let missing = get(deny, "/").await?;
    assert_eq!((missing.status.as_u16(), &missing.body[..]), (403, &b"Access forbidden - token missing.\n"[..]));
    let listed = send(deny, "GET", "/", &[("User-Token", "bad-token")], "").await?;
    assert_eq!((listed.status.as_u16(), &listed.body[..]), (403, &b"Access forbidden.\n"[..]));
    assert_eq!(app.hits(), 0, "denied requests never reach the upstream");
    let allowed = send(deny, "GET", "/", &[("User-Token", "good")], "").await?;
    assert_eq!(allowed.status, 200);
    assert!(allowed.headers.contains_key("x-cpp-root"), "the response went through the plugin's own stream context");
    assert_eq!(app.hits(), 1);

    // The local-reply sample's shape: extra headers with a `:status` pair.
    let hello = get(p.addr("reply").await, "/anything").await?;
    assert_eq!((hello.status.as_u16(), &hello.body[..]), (200, &b"Hello World"[..]));
    assert_eq!(hello.header("content-type"), "text/plain");
    assert!(!hello.header("x-request-id").is_empty());
    assert_eq!(app.hits(), 1, "a local reply never reaches the upstream");

    // A callout from the stream, answered on the root context, resumes the request.
    let authz = p.addr("authz").await;
    let passed = get(authz, "/resource").await?;
    assert_eq!(passed.status, 200, "{:?}", passed.body);
    assert_eq!(passed.json()["headers"]["x-auth-status"], "200");
    assert_eq!(passed.header("x-cpp-root"), "auth");
    auth.set(Behavior::Status(403));
    let refused = get(authz, "/resource").await?;
    assert_eq!(refused.json()["headers"]["x-auth-status"], "403");
    auth.kill();
    let unreachable = get(authz, "/resource").await?;
    assert_eq!((unreachable.status.as_u16(), &unreachable.body[..]), (503, &b"auth unreachable\n"[..]));
    assert_eq!(auth.hits(), 2);

    // A root id the module registered nothing under: the SDK's idle root, requests pass untouched.
    let idle = get(p.addr("idle").await, "/").await?;
    assert_eq!(idle.status, 200);
    assert!(!idle.headers.contains_key("x-cpp-root"));
    Ok(())
}
