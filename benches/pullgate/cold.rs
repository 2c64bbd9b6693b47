//! Items 2 and 3: a cold `pullgate check` (a fresh process: no token, no connection, no
//! known challenge) beside `skopeo inspect` and `skopeo copy` on the same images, first on
//! loopback, then with 25 ms each way on every hop.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::Ctx;
use crate::procs::{Skopeo, SkopeoEnv, median, pullgate_check};
use crate::report::Status;
use crate::support::{
    Action, Cdn, DelayProxy, ImageSpec, PlatformSpec, PolicyProxy, Registry, RegistryAuth, Rule,
    TOKEN_ISSUER, TOKEN_SERVICE, TokenServer, push_image, push_index,
};

const REPS: usize = 5;
const RTT_REPS: usize = 3;
pub const ONE_WAY: Duration = Duration::from_millis(25);
const LAYERS: [usize; 3] = [2 * 1024 * 1024, 512 * 1024, 32 * 1024];
const SKOPEO: [Skopeo; 3] = [Skopeo::InspectRaw, Skopeo::Inspect, Skopeo::Copy];

/// The two images of items 2 and 3: `(label, repo:tag, protocol minimum requests)`.
pub struct Images(Vec<(&'static str, String, u64)>);

pub async fn push_images(ctx: &Ctx) -> anyhow::Result<Images> {
    let spec = ImageSpec::new().with_layers(&LAYERS);
    ctx.w.push("bench/single", "v1", spec.clone()).await;
    let (base, client) = (ctx.w.seed.base(), &ctx.w.push);
    let amd = push_image(&base, client, "bench/multi", None, &spec).await?;
    let arm = push_image(
        &base,
        client,
        "bench/multi",
        None,
        &spec.with_platform_spec(PlatformSpec::linux_arm64()),
    )
    .await?;
    push_index(
        &base,
        client,
        "bench/multi",
        Some("v1"),
        &[
            (PlatformSpec::linux_amd64(), &amd),
            (PlatformSpec::linux_arm64(), &arm),
        ],
        true,
        true,
    )
    .await?;
    Ok(Images(vec![
        // challenge + token + manifest + config + 3 layers
        ("single-arch (3 layers)", "bench/single:v1".to_owned(), 7),
        // challenge + token + index + platform manifest + config + 3 layers
        ("multi-arch index", "bench/multi:v1".to_owned(), 8),
    ]))
}

/// Requests seen upstream during one command.
struct Counts {
    registry: usize,
    token: usize,
    detail: String,
}

impl Counts {
    fn total(&self) -> usize {
        self.registry + self.token
    }
}

async fn counted<T>(
    proxy: &PolicyProxy,
    tokens: &TokenServer,
    run: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Counts)> {
    let (seen, tok) = (proxy.requests().len(), tokens.requests());
    let value = run.await?;
    let new = &proxy.requests()[seen..];
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for s in new {
        let what = if s.path == "/v2/" {
            "ping /v2/"
        } else if s.path.contains("/manifests/") {
            if s.authorization.is_some() {
                "manifest"
            } else {
                "manifest (no token: challenge)"
            }
        } else if s.path.contains("/blobs/") {
            "blob"
        } else {
            "other"
        };
        *kinds.entry(format!("{} {what}", s.method)).or_default() += 1;
    }
    let token = tokens.requests() - tok;
    let mut detail: Vec<String> = kinds.iter().map(|(k, n)| format!("{n}× {k}")).collect();
    detail.push(format!("{token}× token"));
    Ok((
        value,
        Counts {
            registry: new.len(),
            token,
            detail: detail.join(", "),
        },
    ))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

pub async fn cold_probe(ctx: &mut Ctx, images: &Images) -> anyhow::Result<()> {
    println!("\n[2] cold probe: pullgate check beside skopeo, on loopback");
    let host = ctx.reg.host();
    let skopeo = SkopeoEnv::new(ctx.dir.path(), &ctx.w.pki);
    let proxy = PolicyProxy::start(&ctx.w.pki, &ctx.reg).await;
    ctx.report.note(format!(
        "Cold probe (2): each command is a fresh process (no token, connection or known \
         challenge), run against the token-auth registry directly; wall time from spawn to \
         exit, median of {REPS} interleaved runs after one discarded warm-up. Images: 3 \
         layers of 2 MiB, 512 KiB and 32 KiB plus the config; the index has linux/amd64, \
         linux/arm64 and a BuildKit attestation, and every tool resolves linux/amd64. Request \
         counts come from one more run of each command through a counting reverse proxy in \
         front of the registry, plus the token server's own log."
    ));
    for (label, path, minimum) in &images.0 {
        let reference = format!("{host}/{path}");
        pullgate_check(&ctx.w.pki, &reference).await?;
        for s in SKOPEO {
            skopeo.run(s, &reference).await?;
        }
        let (mut pg, mut pg_probe) = (Vec::new(), Vec::new());
        let mut sk: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        for _ in 0..REPS {
            let check = pullgate_check(&ctx.w.pki, &reference).await?;
            pg.push(check.wall);
            pg_probe.push(Duration::from_millis(check.elapsed_ms));
            for s in SKOPEO {
                sk.entry(s.label())
                    .or_default()
                    .push(skopeo.run(s, &reference).await?);
            }
        }
        let pg = median(pg);

        let counting = format!("{}/{path}", proxy.host());
        let (check, counts) =
            counted(&proxy, &ctx.tokens, pullgate_check(&ctx.w.pki, &counting)).await?;
        ctx.report.row(
            "2",
            format!("pullgate check requests, {label}"),
            format!("{} (self-reported {})", counts.total(), check.requests),
            format!("≤ {minimum} (protocol minimum)"),
            Status::of(counts.total() as u64 <= *minimum && check.requests <= *minimum),
        );
        ctx.report
            .note(format!("pullgate check, {label}: {}.", counts.detail));
        ctx.report.info(
            "2",
            format!("pullgate check wall time (probe alone), {label}"),
            format!("{} ({})", ms(pg), ms(median(pg_probe))),
        );
        for s in SKOPEO {
            let wall = median(sk[s.label()].clone());
            let (_, counts) = counted(&proxy, &ctx.tokens, skopeo.run(s, &counting)).await?;
            let ratio = pg.as_secs_f64() / wall.as_secs_f64();
            let figure = format!("pullgate check ÷ {}, {label}", s.label());
            let value = format!("{ratio:.2} ({} vs {})", ms(pg), ms(wall));
            if s == Skopeo::InspectRaw {
                ctx.report.row(
                    "2",
                    figure,
                    value,
                    "< 1 (deep probe faster than manifest-only inspect)",
                    Status::of(ratio < 1.0),
                );
            } else {
                ctx.report.info("2", figure, value);
            }
            ctx.report.info(
                "2",
                format!("{} requests, {label}", s.label()),
                counts.total().to_string(),
            );
            ctx.report
                .note(format!("{}, {label}: {}.", s.label(), counts.detail));
        }
    }
    Ok(())
}

/// A registry of its own whose token realm is the delayed token server, with a delaying proxy
/// in front of it too.
pub struct FarRegistry {
    pub tokens: DelayProxy,
    pub registry: Registry,
    /// The registry, `ONE_WAY` away.
    pub front: DelayProxy,
}

impl FarRegistry {
    pub async fn start(ctx: &Ctx) -> anyhow::Result<FarRegistry> {
        let tokens = DelayProxy::start(ctx.tokens.host().parse()?, ONE_WAY).await;
        let registry = ctx.w.registry(RegistryAuth::Token {
            realm: format!("{}/token", tokens.base()),
            service: TOKEN_SERVICE.to_owned(),
            issuer: TOKEN_ISSUER.to_owned(),
            rootcertbundle_pem: ctx.tokens.signing_cert_pem().to_owned(),
        });
        let front = DelayProxy::start(registry.addr, ONE_WAY).await;
        Ok(FarRegistry {
            tokens,
            registry,
            front,
        })
    }
}

/// What a round trip through a [`DelayProxy`] costs here: the median of 20 one-byte echoes
/// on an open connection through a proxy of [`ONE_WAY`]. It is a little more than
/// `2 × ONE_WAY`: the proxy's threads wake shortly after each deadline, on the same 2 cores as
/// everything measured.
async fn measured_rtt() -> anyhow::Result<Duration> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let upstream = echo.local_addr()?;
    let server = tokio::spawn(async move {
        let (mut s, _) = echo.accept().await?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).await.is_ok() {
            s.write_all(&b).await?;
        }
        anyhow::Ok(())
    });
    let proxy = DelayProxy::start(upstream, ONE_WAY).await;
    let mut c = TcpStream::connect(proxy.addr).await?;
    c.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let mut samples = Vec::new();
    // The first echo also waits for the simulated TCP handshake.
    for i in 0..21 {
        let t = Instant::now();
        c.write_all(&[1]).await?;
        c.read_exact(&mut b).await?;
        if i > 0 {
            samples.push(t.elapsed());
        }
    }
    drop(c);
    server.abort();
    Ok(median(samples))
}

/// A topology with latency on every hop.
struct Hop<'a> {
    label: &'static str,
    registry: &'a DelayProxy,
    /// Round trips the topology adds to the minimum without a CDN.
    extra: u64,
}

pub async fn round_trips(ctx: &mut Ctx, images: &Images) -> anyhow::Result<()> {
    println!(
        "\n[3] round trips: {} ms each way on the registry, the token realm and the CDN",
        ONE_WAY.as_millis()
    );
    let pki = &ctx.w.pki;
    let FarRegistry {
        tokens: delayed_tokens,
        registry,
        front: direct,
    } = FarRegistry::start(ctx).await?;
    let cdn = Cdn::start(pki, Some(&registry)).await;
    let delayed_cdn = DelayProxy::start(cdn.host().parse()?, ONE_WAY).await;
    let redirecting = PolicyProxy::start(pki, &registry).await;
    redirecting.rule(Rule::new(
        None,
        "/blobs/",
        Action::RedirectTo {
            base: delayed_cdn.base(),
        },
    ));
    let via_cdn = DelayProxy::start(redirecting.addr(), ONE_WAY).await;
    let nominal = direct.rtt();
    let rtt = measured_rtt().await?;
    ctx.report.info(
        "3",
        "round trip through the delaying proxy, measured (nominal)",
        format!(
            "{:.1} ms ({} ms)",
            rtt.as_secs_f64() * 1000.0,
            nominal.as_millis()
        ),
    );
    let skopeo = SkopeoEnv::new(ctx.dir.path(), pki);
    ctx.report.note(format!(
        "Round trips (3): a TCP proxy delays every byte {} ms each way (RTT {} ms; a new \
         connection's first byte waits one RTT for the TCP handshake; TLS passes through) in \
         front of the registry, of its token realm (the registry's configured realm is the \
         delayed address) and, in the CDN topology, of the blob host the registry redirects \
         every blob GET to (307). Wall time of the whole command from spawn to exit, median \
         of {RTT_REPS}, divided by the round trip measured through such a proxy (a one-byte \
         echo on an open connection, median of 20; the proxy's wake-ups on the shared cores \
         make it a little longer than nominal), with the figure at the nominal RTT beside it. \
         Protocol minimum: 2 RTT per new connection (TCP + \
         TLS 1.3) and 1 per request, the token and CDN connections opened as soon as their \
         host is known, blobs in parallel: 3 (registry connection + manifest → 401) + 3 \
         (token connection + token) + 1 (manifest) [+ 1 platform manifest] + 1 (blobs) = 8 \
         [9]; with the CDN, + 3 (CDN connection + blob GET after the 307s) = 11 [12].",
        ONE_WAY.as_millis(),
        nominal.as_millis()
    ));
    let hops = [
        Hop {
            label: "no CDN",
            registry: &direct,
            extra: 0,
        },
        Hop {
            label: "blobs via CDN",
            registry: &via_cdn,
            extra: 3,
        },
    ];
    for hop in &hops {
        for (label, path, minimum_requests) in &images.0 {
            // 8 RTT for the single-arch image; the platform manifest adds one.
            let minimum = 8 + (minimum_requests - 7) + hop.extra;
            let reference = format!("{}/{path}", hop.registry.host());
            let conns = |d: &DelayProxy| d.connections();
            let before = [
                conns(hop.registry),
                conns(&delayed_tokens),
                conns(&delayed_cdn),
            ];
            let first = pullgate_check(pki, &reference).await?;
            let opened = [
                conns(hop.registry) - before[0],
                conns(&delayed_tokens) - before[1],
                conns(&delayed_cdn) - before[2],
            ];
            let mut walls = vec![first.wall];
            let mut probes = vec![Duration::from_millis(first.elapsed_ms)];
            for _ in 1..RTT_REPS {
                let c = pullgate_check(pki, &reference).await?;
                walls.push(c.wall);
                probes.push(Duration::from_millis(c.elapsed_ms));
            }
            let (wall, probe) = (median(walls), median(probes));
            let in_rtt = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64();
            ctx.report.row(
                "3",
                format!("pullgate check, {label}, {}", hop.label),
                format!(
                    "{:.1} RTT ({} ms; probe alone {:.1} RTT; {:.1} at the nominal RTT)",
                    in_rtt(wall),
                    wall.as_millis(),
                    in_rtt(probe),
                    wall.as_secs_f64() / nominal.as_secs_f64()
                ),
                format!("≤ {} RTT (minimum {minimum} + 1)", minimum + 1),
                Status::of(in_rtt(wall) <= (minimum + 1) as f64),
            );
            ctx.report.note(format!(
                "pullgate check, {label}, {}: {} requests; TCP connections opened: registry {}, \
                 token realm {}, CDN {}.",
                hop.label, first.requests, opened[0], opened[1], opened[2]
            ));
            for s in SKOPEO {
                let mut walls = Vec::new();
                for _ in 0..RTT_REPS {
                    walls.push(skopeo.run(s, &reference).await?);
                }
                let wall = median(walls);
                ctx.report.info(
                    "3",
                    format!("{}, {label}, {}", s.label(), hop.label),
                    format!("{:.1} RTT ({} ms)", in_rtt(wall), wall.as_millis()),
                );
            }
        }
    }
    Ok(())
}
