//! Item 3: round trips. A cold `pullgate check` (a fresh process) beside `skopeo inspect` and
//! `skopeo copy`, with 25 ms each way on every hop (registry, token realm, CDN), once with
//! every server offering HTTP/2 and HTTP/1.1, once with every server offering HTTP/1.1 only
//! (nginx without `http2`, Nexus, older Harbor setups).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::Ctx;
use crate::cold::Images;
use crate::procs::{PASSWORD, SKOPEO, Skopeo, SkopeoEnv, USER, median, pullgate_check};
use crate::report::Status;
use crate::support::{
    Action, Cdn, DelayProxy, ImageSpec, PolicyProxy, Protocols, Registry, RegistryAuth, Rule,
    TOKEN_ISSUER, TOKEN_SERVICE, TokenServer,
};

const RTT_REPS: usize = 3;
pub const ONE_WAY: Duration = Duration::from_millis(25);

/// The anonymous image: 12 small layers and the config, so 13 blob GETs at once.
const WIDE_LABEL: &str = "anonymous, 12 layers";
const WIDE_PATH: &str = "bench/wide:v1";
const WIDE_LAYERS: [usize; 12] = [4096; 12];

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
        Self::start_speaking(ctx, &ctx.tokens, Protocols::Http2AndHttp1).await
    }

    /// A registry offering `protocols`, whose realm is `tokens`, `ONE_WAY` away.
    async fn start_speaking(
        ctx: &Ctx,
        tokens: &TokenServer,
        protocols: Protocols,
    ) -> anyhow::Result<FarRegistry> {
        let delayed = DelayProxy::start(tokens.host().parse()?, ONE_WAY).await;
        let registry = ctx.w.registry_speaking(
            RegistryAuth::Token {
                realm: format!("{}/token", delayed.base()),
                service: TOKEN_SERVICE.to_owned(),
                issuer: TOKEN_ISSUER.to_owned(),
                rootcertbundle_pem: tokens.signing_cert_pem().to_owned(),
            },
            protocols,
        );
        let front = DelayProxy::start(registry.addr, ONE_WAY).await;
        Ok(FarRegistry {
            tokens: delayed,
            registry,
            front,
        })
    }
}

/// Every server of one protocol, each `ONE_WAY` away: the token-auth registry and its realm,
/// an anonymous registry, a CDN, and for each registry a proxy that redirects its blob GETs
/// to the CDN (307).
struct Topology {
    protocol: &'static str,
    far: FarRegistry,
    anonymous: DelayProxy,
    cdn: DelayProxy,
    via_cdn: DelayProxy,
    anonymous_via_cdn: DelayProxy,
    /// What the fronts above lead to, held while they are measured.
    _servers: (Option<TokenServer>, Option<Registry>, Cdn, [PolicyProxy; 2]),
}

impl Topology {
    async fn start(ctx: &Ctx, protocols: Protocols) -> anyhow::Result<Topology> {
        let pki = &ctx.w.pki;
        // The benchmark's token server and anonymous registry offer both protocols.
        let (tokens, anonymous) = match protocols {
            Protocols::Http2AndHttp1 => (None, None),
            Protocols::Http1Only => {
                let tokens = TokenServer::start_speaking(pki, protocols).await;
                tokens.grant(Some((USER, PASSWORD)), "*", &["pull"]);
                let anonymous = ctx.w.registry_speaking(RegistryAuth::Anonymous, protocols);
                (Some(tokens), Some(anonymous))
            }
        };
        let far =
            FarRegistry::start_speaking(ctx, tokens.as_ref().unwrap_or(&ctx.tokens), protocols)
                .await?;
        let anonymous_registry = anonymous.as_ref().unwrap_or(&ctx.w.seed);
        // Every registry of the benchmark shares one storage, which the CDN reads.
        let cdn = Cdn::start_speaking(pki, Some(&far.registry), protocols).await;
        let delayed_cdn = DelayProxy::start(cdn.host().parse()?, ONE_WAY).await;
        let mut redirecting = Vec::new();
        for upstream in [&far.registry, anonymous_registry] {
            let proxy = PolicyProxy::start_for_speaking(pki, &upstream.base(), protocols).await;
            proxy.rule(Rule::new(
                None,
                "/blobs/",
                Action::RedirectTo {
                    base: delayed_cdn.base(),
                },
            ));
            redirecting.push(proxy);
        }
        let anonymous_front = DelayProxy::start(anonymous_registry.addr, ONE_WAY).await;
        let via_cdn = DelayProxy::start(redirecting[0].addr(), ONE_WAY).await;
        let anonymous_via_cdn = DelayProxy::start(redirecting[1].addr(), ONE_WAY).await;
        let redirecting: [PolicyProxy; 2] = redirecting
            .try_into()
            .map_err(|_| anyhow::anyhow!("two redirecting proxies"))?;
        Ok(Topology {
            protocol: match protocols {
                Protocols::Http2AndHttp1 => "HTTP/2",
                Protocols::Http1Only => "HTTP/1.1",
            },
            far,
            anonymous: anonymous_front,
            cdn: delayed_cdn,
            via_cdn,
            anonymous_via_cdn,
            _servers: (tokens, anonymous, cdn, redirecting),
        })
    }
}

/// One row: an image through one front, with its protocol minimum in round trips.
struct Case<'a> {
    image: &'a str,
    path: &'a str,
    hop: &'static str,
    front: &'a DelayProxy,
    minimum: u64,
    skopeo: &'static [Skopeo],
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

pub async fn round_trips(ctx: &mut Ctx, images: &Images) -> anyhow::Result<()> {
    println!(
        "\n[3] round trips: {} ms each way on the registry, the token realm and the CDN, over \
         HTTP/2 and over HTTP/1.1",
        ONE_WAY.as_millis()
    );
    ctx.w
        .push(
            "bench/wide",
            "v1",
            ImageSpec::new().with_layers(&WIDE_LAYERS),
        )
        .await;
    let rtt = measured_rtt().await?;
    let nominal = ONE_WAY * 2;
    ctx.report.info(
        "3",
        "round trip through the delaying proxy, measured (nominal)",
        format!(
            "{:.1} ms ({} ms)",
            rtt.as_secs_f64() * 1000.0,
            nominal.as_millis()
        ),
    );
    ctx.report.note(format!(
        "Round trips (3): a TCP proxy delays every byte {} ms each way (RTT {} ms; a new \
         connection's first byte waits one RTT for the TCP handshake; TLS passes through) in \
         front of the registry, of its token realm (the registry's configured realm is the \
         delayed address) and, in the CDN topology, of the blob host the registry redirects \
         every blob GET to (307). Two sets of servers: every one offering HTTP/2 and HTTP/1.1 \
         in ALPN (the client takes HTTP/2), and every one offering HTTP/1.1 only (the \
         registry with distribution's `http.http2.disabled`). Images: the two token-auth \
         images of item 2, and an anonymous one with 12 layers of 4 KiB on an anonymous \
         registry (the same storage). Wall time of the whole command from spawn to exit, \
         median of {RTT_REPS}, divided by the round trip measured through such a proxy (a \
         one-byte echo on an open connection, median of 20; the proxy's wake-ups on the \
         shared cores make it a little longer than nominal), with the figure at the nominal \
         RTT beside it. Protocol minimum: 2 RTT per new connection (TCP + TLS 1.3) and 1 per \
         request, the token and CDN connections opened as soon as their host is known, blobs \
         in parallel: 3 (registry connection + manifest → 401) + 3 (token connection + \
         token) + 1 (manifest) [+ 1 platform manifest] + 1 (blobs) = 8 [9]; anonymous, 2 + \
         1 (manifest) + 1 (blobs) = 4; with the CDN, + 3 (CDN connection + blob GET after \
         the 307s): 11 [12], anonymous 7. Over HTTP/1.1 the minimum is the same: the \
         connections the blob GETs need can be opened beside the first request. pullgate is \
         compared with `skopeo inspect --raw` (the manifest alone) where the minimum leaves \
         room to be ahead of skopeo's measured figure.",
        ONE_WAY.as_millis(),
        nominal.as_millis()
    ));
    let skopeo = SkopeoEnv::new(ctx.dir.path(), &ctx.w.pki);
    for protocols in [Protocols::Http2AndHttp1, Protocols::Http1Only] {
        let topology = Topology::start(ctx, protocols).await?;
        let mut cases = Vec::new();
        for (hop, front, extra) in [
            ("no CDN", &topology.far.front, 0),
            ("blobs via CDN", &topology.via_cdn, 3),
        ] {
            for (label, path, minimum_requests) in &images.0 {
                cases.push(Case {
                    image: label,
                    path,
                    hop,
                    front,
                    // 8 RTT for the single-arch image; the platform manifest adds one.
                    minimum: 8 + (minimum_requests - 7) + extra,
                    skopeo: &SKOPEO,
                });
            }
        }
        for (hop, front, minimum) in [
            ("no CDN", &topology.anonymous, 4),
            ("blobs via CDN", &topology.anonymous_via_cdn, 7),
        ] {
            cases.push(Case {
                image: WIDE_LABEL,
                path: WIDE_PATH,
                hop,
                front,
                minimum,
                skopeo: &[Skopeo::InspectRaw],
            });
        }
        for case in &cases {
            measure(ctx, &topology, &skopeo, case, rtt).await?;
        }
    }
    Ok(())
}

async fn measure(
    ctx: &mut Ctx,
    topology: &Topology,
    skopeo: &SkopeoEnv,
    case: &Case<'_>,
    rtt: Duration,
) -> anyhow::Result<()> {
    let pki = &ctx.w.pki;
    let (image, hop, protocol) = (case.image, case.hop, topology.protocol);
    let reference = format!("{}/{}", case.front.host(), case.path);
    let fronts = [case.front, &topology.far.tokens, &topology.cdn];
    let before = fronts.map(DelayProxy::connections);
    let first = pullgate_check(pki, &reference).await?;
    let opened: Vec<usize> = fronts
        .iter()
        .zip(before)
        .map(|(f, b)| f.connections() - b)
        .collect();
    let mut walls = vec![first.wall];
    let mut probes = vec![Duration::from_millis(first.elapsed_ms)];
    for _ in 1..RTT_REPS {
        let c = pullgate_check(pki, &reference).await?;
        walls.push(c.wall);
        probes.push(Duration::from_millis(c.elapsed_ms));
    }
    let (wall, probe) = (median(walls), median(probes));
    let in_rtt = |d: Duration| d.as_secs_f64() / rtt.as_secs_f64();
    let pullgate = in_rtt(wall);
    let minimum = case.minimum;
    ctx.report.row(
        "3",
        format!("pullgate check, {image}, {hop}, {protocol}"),
        format!(
            "{pullgate:.1} RTT ({} ms; probe alone {:.1} RTT; {:.1} at the nominal RTT)",
            wall.as_millis(),
            in_rtt(probe),
            wall.as_secs_f64() / (ONE_WAY * 2).as_secs_f64()
        ),
        format!("≤ {} RTT (minimum {minimum} + 1)", minimum + 1),
        Status::of(pullgate <= (minimum + 1) as f64),
    );
    ctx.report.note(format!(
        "pullgate check, {image}, {hop}, {protocol}: {} requests and {} warm-ups; TCP \
         connections opened: registry {}, token realm {}, CDN {}.",
        first.requests, first.warmups, opened[0], opened[1], opened[2]
    ));
    for &s in case.skopeo {
        let mut walls = Vec::new();
        for _ in 0..RTT_REPS {
            walls.push(skopeo.run(s, &reference).await?);
        }
        let wall = median(walls);
        let theirs = in_rtt(wall);
        ctx.report.info(
            "3",
            format!("{}, {image}, {hop}, {protocol}", s.label()),
            format!("{theirs:.1} RTT ({} ms)", wall.as_millis()),
        );
        if s != Skopeo::InspectRaw {
            continue;
        }
        let figure = format!("pullgate check ÷ skopeo inspect --raw, {image}, {hop}, {protocol}");
        let value = format!(
            "{:.2} ({pullgate:.1} vs {theirs:.1} RTT)",
            pullgate / theirs
        );
        // skopeo reads the manifest alone: pullgate, which reads the blobs too, can be
        // ahead only where its minimum is below skopeo's measured figure.
        if (minimum as f64) < theirs {
            ctx.report.row(
                "3",
                figure,
                value,
                format!("< 1 (the minimum, {minimum} RTT, is below skopeo's)"),
                Status::of(pullgate < theirs),
            );
        } else {
            ctx.report.info(
                "3",
                figure,
                format!("{value}; the minimum, {minimum} RTT, is not below skopeo's"),
            );
        }
    }
    Ok(())
}
