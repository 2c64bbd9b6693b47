//! Items 4 and 5: a thousand concurrent reviews of one uncached image (how many times does
//! the registry see its manifest?), and a Pod of 20 uncached images against a Pod of one.

use std::time::Duration;

use bytes::Bytes;

use crate::Ctx;
use crate::load::{self, Target};
use crate::pod::pod_review_bytes;
use crate::procs::{Server, median, write_docker_config};
use crate::report::Status;
use crate::rtt::{FarRegistry, ONE_WAY};
use crate::support::{ImageSpec, PolicyProxy};

const HERD: usize = 1_000;
/// Connection caps above the herd's 1,000 connections from one address.
const HERD_CONNECTIONS: [&str; 4] = [
    "--max-connections",
    "2000",
    "--max-connections-per-source",
    "2000",
];
const FAN_OUT: usize = 20;
const FAN_OUT_REPS: usize = 5;

pub async fn herd(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n[4] herd: {HERD} concurrent reviews of one uncached image");
    ctx.w
        .push(
            "herd/app",
            "1.0",
            ImageSpec::new().with_layers(&[256 * 1024, 32 * 1024, 4 * 1024]),
        )
        .await;
    let proxy = PolicyProxy::start(&ctx.w.pki, &ctx.reg).await;
    let config = write_docker_config(ctx.dir.path(), &[proxy.host()]);
    // The generator opens a connection per review, from one address, as an apiserver with
    // HTTP/2 turned off would; the caps that bound what one pod may hold are raised for it.
    let server = Server::start(ctx.dir.path(), &ctx.w.pki, &config, &HERD_CONNECTIONS).await?;
    let target = Target::new(server.addr, ctx.w.pki.client_tls(), "/validate?timeout=10s");
    let image = vec![format!("{}/herd/app:1.0", proxy.host())];
    let bodies: Vec<Bytes> = (0..HERD)
        .map(|i| {
            Bytes::from(pod_review_bytes(
                &format!("herd-{i}"),
                &format!("app-{i:04}"),
                &image,
            ))
        })
        .collect();
    let tokens_before = ctx.tokens.requests();
    let (answers, wall) = load::burst(&target, bodies).await?;
    let admitted = answers
        .iter()
        .filter(|(_, a)| a.as_deref().is_ok_and(load::allowed))
        .count();
    let mut latency = load::histogram();
    for (d, _) in &answers {
        load::record(&mut latency, *d);
    }
    let seen = proxy.requests();
    let manifests: Vec<_> = seen
        .iter()
        .filter(|s| s.path.contains("/manifests/"))
        .collect();
    let with_token = manifests
        .iter()
        .filter(|s| s.authorization.is_some())
        .count();
    let blobs = seen.iter().filter(|s| s.path.contains("/blobs/")).count();
    let tokens = ctx.tokens.requests() - tokens_before;
    ctx.report.note(format!(
        "Herd (4): a fresh `pullgate serve`, {HERD} TLS connections opened first, then one Pod \
         review on each at the same instant, all for the same uncached image (3 layers) on the \
         token-auth registry; requests counted by a reverse proxy in front of the registry and \
         by the token server. Upstream: {} manifest GET(s) ({with_token} with a token, {} \
         unauthenticated, answered by the 401 challenge), {blobs} blob GETs, {tokens} token \
         request(s). {admitted} of {HERD} reviews admitted; the burst took {:.0} ms, review \
         latency p50 {:.1} ms, max {:.1} ms.",
        manifests.len(),
        manifests.len() - with_token,
        wall.as_secs_f64() * 1000.0,
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
    ));
    ctx.report.row(
        "4",
        format!("manifest GETs upstream for {HERD} concurrent reviews"),
        format!("{with_token} (+{} challenge)", manifests.len() - with_token),
        "exactly 1 per image and credential",
        Status::of(with_token == 1 && manifests.len() <= 2),
    );
    ctx.report.info(
        "4",
        "token requests / blob GETs upstream during the herd",
        format!("{tokens} / {blobs}"),
    );
    ctx.report.info(
        "4",
        "reviews admitted / herd wall time",
        format!(
            "{admitted} of {HERD} / {:.0} ms",
            wall.as_secs_f64() * 1000.0
        ),
    );
    Ok(())
}

/// One fan-out measurement: medians of the one-image and the twenty-image review, and the
/// CPU of pullgate, the registry and this process during the twenty-image reviews.
struct FanOut {
    one: Duration,
    many: Duration,
    cpu_many: [Duration; 3],
}

impl FanOut {
    fn ratio(&self) -> f64 {
        self.many.as_secs_f64() / self.one.as_secs_f64()
    }

    fn shown(&self) -> String {
        format!(
            "{:.2} ({:.1} ms vs {:.1} ms)",
            self.ratio(),
            self.many.as_secs_f64() * 1000.0,
            self.one.as_secs_f64() * 1000.0
        )
    }
}

/// Fan-out against the registry reached at `host` (served by the process `registry_pid`);
/// `prefix` keeps each run's repositories apart.
async fn measure_fan_out(
    ctx: &mut Ctx,
    host: &str,
    registry_pid: u32,
    prefix: &str,
) -> anyhow::Result<FanOut> {
    let config = write_docker_config(ctx.dir.path(), &[host.to_owned()]);
    let server = Server::start(ctx.dir.path(), &ctx.w.pki, &config, &HERD_CONNECTIONS).await?;
    let target = Target::new(server.addr, ctx.w.pki.client_tls(), "/validate?timeout=10s");
    let spec = ImageSpec::new().with_layers(&[128 * 1024, 16 * 1024, 2 * 1024]);
    // A running webhook has talked to the registry before: the connection, its TLS session
    // and the registry's challenge are known, as in production.
    ctx.w
        .push(&format!("{prefix}/warm"), "1.0", spec.clone())
        .await;
    let warm = pod_review_bytes("warm", "warm", &[format!("{host}/{prefix}/warm:1.0")]);
    load::one(&target, Bytes::from(warm)).await?;

    let (mut one, mut many) = (Vec::new(), Vec::new());
    // Where the CPU of the twenty-image reviews goes: with every process on the same 2 cores,
    // the ratio measures whoever is busiest.
    let pids = [
        server.pid(),
        registry_pid,
        std::process::id(), // the token server, the delaying proxies and the load generator
    ];
    let mut cpu_many = [Duration::ZERO; 3];
    for rep in 0..FAN_OUT_REPS {
        let mut images = Vec::new();
        for k in 0..=FAN_OUT {
            let repo = format!("{prefix}/r{rep}-app{k:02}");
            ctx.w.push(&repo, "1.0", spec.clone()).await;
            images.push(format!("{host}/{repo}:1.0"));
        }
        let single = pod_review_bytes(&format!("one-{rep}"), "one", &images[..1]);
        let twenty = pod_review_bytes(&format!("twenty-{rep}"), "twenty", &images[1..]);
        // Alternate which goes first, so neither always finds the other's connections warm.
        let order: [(bool, Vec<u8>); 2] = if rep % 2 == 0 {
            [(false, single), (true, twenty)]
        } else {
            [(true, twenty), (false, single)]
        };
        for (is_many, body) in order {
            let cpu_before = pids.map(crate::procs::cpu_time);
            let (took, answer) = load::one(&target, Bytes::from(body)).await?;
            if is_many {
                for (i, pid) in pids.into_iter().enumerate() {
                    cpu_many[i] += crate::procs::cpu_time(pid).saturating_sub(cpu_before[i]);
                }
            }
            anyhow::ensure!(
                load::allowed(&answer),
                "fan-out pod not admitted: {}",
                String::from_utf8_lossy(&answer)
            );
            if is_many { &mut many } else { &mut one }.push(took);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(FanOut {
        one: median(one),
        many: median(many),
        cpu_many,
    })
}

pub async fn fan_out(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!("\n[5] fan-out: a Pod with {FAN_OUT} uncached images against a Pod with one");
    let (host, pid) = (ctx.reg.host(), ctx.reg.pid());
    let direct = measure_fan_out(ctx, &host, pid, "fanout").await?;

    // The same with latency on the registry and its token realm: what a cluster sees, where
    // the registry is not on the webhook's own 2 cores.
    let far_registry = FarRegistry::start(ctx).await?;
    let (far_host, far_pid) = (far_registry.front.host(), far_registry.registry.pid());
    let far = measure_fan_out(ctx, &far_host, far_pid, "fanout-rtt").await?;

    ctx.report.note(format!(
        "Fan-out (5): a fresh `pullgate serve` that has already probed one image of the \
         registry; then, {FAN_OUT_REPS} times, a Pod with 1 new image and a Pod with \
         {FAN_OUT} new images (each in its own repository, so its own token scope; 3 layers \
         each), latency of the review from send to answer, medians. Once against the \
         registry on loopback, once through the delaying proxies of item 3 ({} ms each way \
         in front of the registry and its token realm).",
        ONE_WAY.as_millis()
    ));
    ctx.report.row(
        "5",
        format!("review latency, {FAN_OUT} uncached images ÷ 1"),
        direct.shown(),
        "< 2",
        Status::of(direct.ratio() < 2.0),
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / FAN_OUT_REPS as f64;
    let cpu = |f: &FanOut| {
        format!(
            "{:.0} / {:.0} / {:.0} ms",
            ms(f.cpu_many[0]),
            ms(f.cpu_many[1]),
            ms(f.cpu_many[2])
        )
    };
    ctx.report.info(
        "5",
        format!("CPU per {FAN_OUT}-image review: pullgate / registry / token server + generator"),
        cpu(&direct),
    );
    ctx.report.info(
        "5",
        format!(
            "review latency, {FAN_OUT} uncached images ÷ 1, RTT {} ms",
            far_registry.front.rtt().as_millis()
        ),
        far.shown(),
    );
    ctx.report.info(
        "5",
        format!(
            "CPU per {FAN_OUT}-image review at RTT {} ms: pullgate / registry / rest",
            far_registry.front.rtt().as_millis()
        ),
        cpu(&far),
    );
    Ok(())
}
