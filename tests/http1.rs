//! Registries that speak only HTTP/1.1 (nginx without `http2`, Nexus, older Harbor setups):
//! the probe opens the connections its blob GETs need while its first request is on its way
//! (warm-ups), uses them again, and sends no warm-up to a registry that speaks HTTP/2. Counted
//! at a proxy in front of a real registry, by the connection each request came on: orders and
//! counts, never times. A delaying proxy in front gives every exchange a round trip, as a
//! registry has that is not on loopback: the connections then open together and the answers
//! come in the order of the round trips they need, however fast the machine.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use pullgate::{
    oci::platform::Platform,
    oci::reference::ImageRef,
    probe::{self, ProbeOptions, Report, Verdict},
    registry::{ClientOptions, Credential, RegistryClient},
};
use support::*;

async fn check(client: &RegistryClient, reference: &str, creds: &[Credential]) -> Report {
    let options = ProbeOptions {
        platforms: vec![Platform::linux_amd64()],
        timeout: Duration::from_secs(20),
        ..ProbeOptions::default()
    };
    probe::probe(
        client,
        &ImageRef::parse(reference).unwrap(),
        creds,
        &options,
    )
    .await
}

fn client(w: &World, pool_idle: Duration) -> RegistryClient {
    RegistryClient::new(ClientOptions {
        extra_roots: vec![w.pki.ca_der().clone()],
        pool_idle,
        ..ClientOptions::default()
    })
    .unwrap()
}

/// A round trip of 40 ms in front of `upstream`.
async fn far(upstream: std::net::SocketAddr) -> DelayProxy {
    DelayProxy::start(upstream, Duration::from_millis(20)).await
}

/// The requests since `from`, each with the number of requests its connection carried
/// before it.
fn with_earlier(seen: &[Seen], from: usize) -> Vec<(&Seen, usize)> {
    let mut carried: HashMap<ConnectionId, usize> = HashMap::new();
    seen.iter()
        .enumerate()
        .map(|(i, s)| {
            let n = carried.entry(s.connection.expect("numbered")).or_default();
            let before = *n;
            *n += 1;
            (i, s, before)
        })
        .filter(|(i, _, _)| *i >= from)
        .map(|(_, s, before)| (s, before))
        .collect()
}

/// Without warm-ups, every blob GET but the first would open its own connection. With them,
/// normally none does; a machine under heavy load may finish a warm-up after the blob GET it
/// was for is sent, so a few are allowed rather than depend on the machine's speed. Returns how
/// many did.
fn assert_blob_gets_rarely_wait(seen: &[Seen], blobs: usize) -> usize {
    let waited: Vec<&Seen> = with_earlier(seen, 0)
        .into_iter()
        .filter(|(s, before)| is_blob(s) && *before == 0)
        .map(|(s, _)| s)
        .collect();
    assert!(
        waited.len() <= blobs / 3,
        "{} of {blobs} blob GETs waited for a new connection: {waited:?}",
        waited.len()
    );
    waited.len()
}

fn is_warm_up(s: &Seen) -> bool {
    s.method == "GET" && s.path == "/v2/"
}

fn is_blob(s: &Seen) -> bool {
    s.path.contains("/blobs/")
}

fn cred(user: &str, pass: &str) -> Credential {
    Credential::new(user, pass, format!("test {user}"))
}

/// A token-auth registry behind an HTTP/1.1 proxy, whose token realm speaks HTTP/1.1 too,
/// with `private/app:v1` (4 blobs) that alice may pull.
struct TokenRegistry {
    tokens: TokenServer,
    _registry: Registry,
    proxy: PolicyProxy,
    front: DelayProxy,
}

async fn token_registry(w: &World) -> TokenRegistry {
    w.push(
        "private/app",
        "v1",
        ImageSpec::new().with_layers(&[100, 200, 300]),
    )
    .await;
    let tokens = TokenServer::start_speaking(&w.pki, Protocols::Http1Only).await;
    tokens.grant(Some(("alice", "s3cret")), "private/app", &["pull"]);
    let registry = w.registry_speaking(tokens.registry_auth(), Protocols::Http1Only);
    let proxy =
        PolicyProxy::start_for_speaking(&w.pki, &registry.base(), Protocols::Http1Only).await;
    let front = far(proxy.addr()).await;
    TokenRegistry {
        tokens,
        _registry: registry,
        proxy,
        front,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_gets_go_on_connections_opened_beside_the_manifest_and_used_again() {
    let w = World::new();
    let layers = [10, 20, 30, 40, 50, 60, 70, 80];
    w.push("wide/app", "v1", ImageSpec::new().with_layers(&layers))
        .await;
    let proxy = PolicyProxy::start_for_speaking(&w.pki, &w.seed.base(), Protocols::Http1Only).await;
    let front = far(proxy.addr()).await;
    let client = client(&w, Duration::from_secs(30));
    let reference = format!("{}/wide/app:v1", front.host());

    let r = check(&client, &reference, &[]).await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    let blobs = layers.len() + 1;
    assert_eq!(r.requests as usize, 1 + blobs, "warm-ups are not requests");
    let seen = proxy.requests();
    let warm_ups: Vec<&Seen> = seen.iter().filter(|s| is_warm_up(s)).collect();
    assert_eq!(
        warm_ups.len(),
        r.warmups as usize,
        "every warm-up is reported"
    );
    assert!(
        warm_ups.len() >= blobs - 1,
        "a connection for every blob GET the manifest's cannot carry: {}",
        warm_ups.len()
    );
    assert!(warm_ups.iter().all(|s| s.authorization.is_none()));
    let waited = assert_blob_gets_rarely_wait(&seen, blobs);

    // Every connection went back to the pool: the next probe opens none and warms none.
    let (from, accepted) = (seen.len(), front.connections());
    let r = check(&client, &reference, &[]).await;
    assert_eq!(r.verdict, Verdict::Pullable);
    assert_eq!(r.warmups, 0);
    assert_eq!(front.connections(), accepted);
    assert_eq!(proxy.requests().len(), from + 1 + blobs);
    // A connection is closed only when one more than needed was opened: a warm-up that
    // finished after the blob GET it was for had opened its own (see above).
    let ended = proxy.server().connections_ended();
    assert!(ended.len() <= waited, "closed: {ended:?}, waited: {waited}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_read_to_its_end_and_its_connection_kept() {
    let w = World::new();
    let reg = token_registry(&w).await;
    // The first manifest GET's 401 is the registry's challenge, with its body a packet
    // behind its head: hyper keeps a connection whose unread body has not arrived yet only
    // when the body is read.
    let challenge = format!(
        r#"Bearer realm="{}",service="{TOKEN_SERVICE}",scope="repository:private/app:pull""#,
        reg.tokens.realm()
    );
    reg.proxy.rule_times(
        Rule::new(
            Some(axum::http::Method::GET),
            "/manifests/",
            Action::RespondSlowly {
                status: 401,
                headers: vec![("WWW-Authenticate".into(), challenge)],
                body: r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .into(),
                pause: Duration::from_millis(50),
            },
        ),
        1,
    );
    let client = client(&w, Duration::from_secs(30));
    let reference = format!("{}/private/app:v1", reg.front.host());
    let alice = [cred("alice", "s3cret")];

    let r = check(&client, &reference, &alice).await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    // challenge (401 manifest) + token + manifest + config + 3 layers.
    assert_eq!(r.requests, 7, "{r:#?}");
    assert!(r.warmups > 0);
    let seen = reg.proxy.requests();
    let challenged = seen
        .iter()
        .find(|s| s.path.contains("/manifests/"))
        .and_then(|s| s.connection)
        .unwrap();
    // The warm-ups' 401s too: every request without credentials was answered 401.
    let refused: Vec<ConnectionId> = seen
        .iter()
        .filter(|s| s.authorization.is_none())
        .map(|s| s.connection.unwrap())
        .collect();
    assert_eq!(refused.len(), 1 + r.warmups as usize);
    let _ = assert_blob_gets_rarely_wait(&seen, 4);
    let accepted = reg.front.connections();
    let r = check(&client, &reference, &alice).await;
    assert_eq!(r.verdict, Verdict::Pullable);
    assert_eq!(
        r.requests, 5,
        "token and challenge known: manifest + 4 blobs"
    );
    assert_eq!(
        reg.front.connections(),
        accepted,
        "every connection was kept"
    );
    let ended = reg.proxy.server().connections_ended();
    assert!(
        !ended.contains(&challenged),
        "the challenge's connection was closed"
    );
    assert!(
        refused.iter().all(|c| !ended.contains(c)),
        "connections closed after a 401: {ended:?} of {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ups_never_carry_credentials() {
    let w = World::new();
    let reg = token_registry(&w).await;
    // Pooled connections kept a second: the second probe finds the pool cold and warms it
    // again, with the registry's challenge known and a token cached this time.
    let pool_idle = Duration::from_secs(1);
    let client = client(&w, pool_idle);
    let reference = format!("{}/private/app:v1", reg.front.host());
    let alice = [cred("alice", "s3cret")];
    let r = check(&client, &reference, &alice).await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");

    tokio::time::sleep(pool_idle + Duration::from_millis(200)).await;
    let from = reg.proxy.requests().len();
    let r = check(&client, &reference, &alice).await;
    assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
    let seen = reg.proxy.requests();
    let second = &seen[from..];
    let manifest = second
        .iter()
        .find(|s| s.path.contains("/manifests/"))
        .unwrap();
    assert!(
        manifest
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer ")),
        "the known challenge is answered up front: {manifest:?}"
    );
    let warm_ups: Vec<&Seen> = second.iter().filter(|s| is_warm_up(s)).collect();
    assert_eq!(warm_ups.len(), r.warmups as usize);
    assert!(
        !warm_ups.is_empty(),
        "a cold pool is warmed for the blob GETs"
    );
    assert!(
        warm_ups.iter().all(|s| s.authorization.is_none()),
        "{warm_ups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_speaks_http2_gets_no_warm_up() {
    let w = World::new();
    w.push(
        "wide/app",
        "v1",
        ImageSpec::new().with_layers(&[10, 20, 30, 40]),
    )
    .await;
    // Offers h2 and http/1.1; the client takes h2.
    let proxy = PolicyProxy::start(&w.pki, &w.seed).await;
    let front = far(proxy.addr()).await;
    let client = client(&w, Duration::from_secs(30));
    let reference = format!("{}/wide/app:v1", front.host());
    for round in 0..2 {
        let r = check(&client, &reference, &[]).await;
        assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
        assert_eq!(r.warmups, 0, "round {round}");
        assert_eq!(r.requests, 6);
    }
    // The first probe guessed warm-ups for a registry never seen; they stopped when its
    // first connection negotiated HTTP/2, before any was sent.
    assert_eq!(proxy.count("=/v2/"), 0);
    assert_eq!(proxy.requests().len(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_probes_of_one_registry_send_one_burst() {
    let w = World::new();
    for tag in ["1", "2", "3", "4"] {
        w.push("many/app", tag, ImageSpec::new().with_layers(&[10, 20, 30]))
            .await;
    }
    let proxy = PolicyProxy::start_for_speaking(&w.pki, &w.seed.base(), Protocols::Http1Only).await;
    let front = far(proxy.addr()).await;
    let client = client(&w, Duration::from_secs(30));
    let probes = ["1", "2", "3", "4"].map(|tag| {
        let (client, reference) = (client.clone(), format!("{}/many/app:{tag}", front.host()));
        tokio::spawn(async move { check(&client, &reference, &[]).await })
    });
    let mut warmups = 0;
    for probe in probes {
        let r = probe.await.unwrap();
        assert_eq!(r.verdict, Verdict::Pullable, "{r:#?}");
        warmups += r.warmups;
    }
    let sent = proxy.count("=/v2/");
    assert_eq!(sent, warmups as usize);
    assert!(sent > 0);
    assert!(
        sent <= 15,
        "one burst for the registry, not one per probe: {sent} warm-ups"
    );
}
