//! Item 7: hostile load (issue 14). Ordinary reviews at a fixed rate, all of cached images,
//! while each attack runs against the same server: their p99 and the server's peak RSS
//! (VmHWM; a fresh server for each attack, so each peak is that attack's).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::Ctx;
use crate::hot::mib;
use crate::load::{self, Target};
use crate::pod::pod_review_bytes;
use crate::procs::{Server, write_docker_config};
use crate::report::Status;
use crate::support::{
    ImageSpec, bloating_registry, containers, idle_tls, never_answering_registry, pod_with_spec,
};

const RATE: u64 = 200;
const DURATION: Duration = Duration::from_secs(10);
const CONNECTIONS: usize = 4;
/// The goal: an ordinary review stays well inside the apiserver's patience under any attack.
const P99_GOAL_MS: f64 = 100.0;

/// One attack: runs until `stop` is set, counting what it sent in `sent`.
type Attack = fn(Arc<Setting>) -> futures_util::future::BoxFuture<'static, ()>;

/// What an attack works with.
struct Setting {
    server: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    target: Target,
    hostile_hosts: Vec<String>,
    bloat_host: String,
    stop: AtomicBool,
    sent: AtomicU64,
}

pub async fn hostile(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!(
        "\n[7] hostile load: {RATE} cached reviews/s for {}s while each attack runs",
        DURATION.as_secs()
    );
    let host = ctx.reg.host();
    let mut images = Vec::new();
    for repo in ["hostile/api", "hostile/worker"] {
        ctx.w
            .push(repo, "1.0", ImageSpec::new().with_layers(&[4096, 1024]))
            .await;
        images.push(format!("{host}/{repo}:1.0"));
    }
    let config = write_docker_config(ctx.dir.path(), std::slice::from_ref(&host));
    let never = never_answering_registry(&ctx.w.pki, 64).await;
    let bloat = bloating_registry(&ctx.w.pki).await;
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..16)
            .map(|i| {
                Bytes::from(pod_review_bytes(
                    &format!("ok-{i}"),
                    &format!("ok-{i}"),
                    &images,
                ))
            })
            .collect(),
    );
    let attacks: [(&str, Option<Attack>); 5] = [
        ("none", None),
        (
            "2,000 idle TLS connections from 10 addresses",
            Some(|s| Box::pin(idle(s))),
        ),
        (
            "Pods of 70,000 images and of 200,000 pull secrets",
            Some(|s| Box::pin(huge_specs(s))),
        ),
        (
            "a registry of 64 ports whose 512-layer blobs never answer",
            Some(|s| Box::pin(never_answering(s))),
        ),
        (
            "250 KB tokens and 1,024-platform indexes, 250 images a review",
            Some(|s| Box::pin(bloating(s))),
        ),
    ];
    for (name, attack) in attacks {
        let server = Server::start(ctx.dir.path(), &ctx.w.pki, &config, &[]).await?;
        let target = Target::new(server.addr, ctx.w.pki.client_tls(), "/validate?timeout=10s");
        let (_, warm) = load::one(&target, bodies[0].clone()).await?;
        anyhow::ensure!(load::allowed(&warm), "the ordinary pod is not admitted");
        let setting = Arc::new(Setting {
            server: server.addr,
            tls: Arc::new(ctx.w.pki.client_tls()),
            target: Target::new(server.addr, ctx.w.pki.client_tls(), "/validate?timeout=10s"),
            hostile_hosts: never.iter().map(|s| s.host()).collect(),
            bloat_host: bloat.host(),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
        });
        let running = attack.map(|attack| tokio::spawn(attack(setting.clone())));
        // The attack gets a second to build up before the ordinary load starts.
        if running.is_some() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let run = load::fixed_rate(&target, bodies.clone(), CONNECTIONS, RATE, DURATION).await?;
        setting.stop.store(true, Ordering::SeqCst);
        if let Some(running) = running {
            let _ = tokio::time::timeout(Duration::from_secs(15), running).await;
        }
        let peak = server.status_kib("VmHWM");
        let p99 = run.ms(0.99);
        ctx.report.row(
            "7",
            format!("p99 of ordinary reviews, attack: {name}"),
            format!("{p99:.1} ms ({} failed)", run.errors),
            format!("≤ {P99_GOAL_MS} ms, none failed"),
            Status::of(p99 <= P99_GOAL_MS && run.errors == 0),
        );
        ctx.report.row(
            "7",
            format!("peak RSS, attack: {name}"),
            format!(
                "{} ({} attack requests)",
                mib(peak),
                setting.sent.load(Ordering::SeqCst)
            ),
            "≤ 512 MiB (the Deployment's limit)",
            Status::of(peak <= 512 * 1024),
        );
    }
    ctx.report.note(format!(
        "Hostile load (7): for each attack a fresh `pullgate serve` (default flags), {CONNECTIONS} \
         keep-alive connections sending {RATE} reviews/s of a Pod whose 2 images are cached, \
         for {}s, one second after the attack started; the attack runs from the same machine \
         (2 cores) throughout. Peak RSS is the server's VmHWM.",
        DURATION.as_secs()
    ));
    drop((never, bloat));
    Ok(())
}

/// Holds 2,000 idle TLS connections from ten addresses, opening new ones as the server
/// closes old ones.
async fn idle(s: Arc<Setting>) {
    let mut held = Vec::new();
    let mut n = 0u32;
    while !s.stop.load(Ordering::SeqCst) {
        let opened = join_all((0..100).map(|i| {
            let source = IpAddr::from([127, 0, 0, 2 + ((n + i) % 10) as u8]);
            idle_tls(source, s.server, s.tls.clone(), i % 2 == 0)
        }))
        .await;
        n += 100;
        s.sent.fetch_add(100, Ordering::SeqCst);
        held.extend(opened.into_iter().flatten());
        if held.len() > 2_000 {
            held.drain(..held.len() - 2_000);
        }
        if n >= 2_000 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Sends, over and over, two at a time, Pods of 70,000 images and of 200,000 pull secrets.
async fn huge_specs(s: Arc<Setting>) {
    let images: Vec<String> = (0..70_000).map(|i| format!("r.example/i{i}:1")).collect();
    let many_images = Bytes::from(pod_with_spec("images", containers(&images)));
    let secrets: Vec<Value> = (0..200_000)
        .map(|i| json!({"name": format!("s{i}")}))
        .collect();
    let many_secrets = Bytes::from(pod_with_spec(
        "secrets",
        json!({"containers": [{"name": "c", "image": "r.example/a:1"}], "imagePullSecrets": secrets}),
    ));
    send_until_stopped(&s, 2, |i| {
        if i % 2 == 0 {
            many_images.clone()
        } else {
            many_secrets.clone()
        }
    })
    .await;
}

/// Reviews Pods of the 64 never-answering images, each time under new tags so that nothing
/// is cached.
async fn never_answering(s: Arc<Setting>) {
    let hosts = s.hostile_hosts.clone();
    send_until_stopped(&s, 2, |i| {
        let images: Vec<String> = hosts.iter().map(|h| format!("{h}/x/y:t{i}")).collect();
        Bytes::from(pod_with_spec("never", containers(&images)))
    })
    .await;
}

/// Reviews Pods of 250 new images each, alternately behind a token endpoint issuing 250 KB
/// tokens and an index of 1,024 platforms.
async fn bloating(s: Arc<Setting>) {
    let host = s.bloat_host.clone();
    send_until_stopped(&s, 2, |i| {
        let repo = if i % 2 == 0 { "tok" } else { "idx" };
        let images: Vec<String> = (0..250)
            .map(|k| format!("{host}/{repo}/r{i}-{k}:1"))
            .collect();
        Bytes::from(pod_with_spec("bloat", containers(&images)))
    })
    .await;
}

/// Sends `body(i)` for i = 0, 1, 2… on `connections` connections until stopped.
async fn send_until_stopped(s: &Setting, connections: usize, body: impl Fn(u64) -> Bytes) {
    let Ok(mut conns) = s.target.connect_many(connections).await else {
        return;
    };
    let next = AtomicU64::new(0);
    let body = &body;
    let next = &next;
    join_all(conns.iter_mut().map(|conn| async move {
        while !s.stop.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            s.sent.fetch_add(1, Ordering::SeqCst);
            if conn.review(body(i)).await.is_err() {
                // The server closed the connection: a new one, after a pause.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(fresh) = s.target.connect().await {
                    *conn = fresh;
                }
            }
        }
    }))
    .await;
}
