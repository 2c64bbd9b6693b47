//! Item 2: a cold `pullgate check` (a fresh process: no token, no connection, no known
//! challenge) beside `skopeo inspect` and `skopeo copy` on the same images, on loopback. Item
//! 3 (`rtt.rs`) measures the same with latency on every hop.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Ctx;
use crate::procs::{SKOPEO, Skopeo, SkopeoEnv, median, pullgate_check};
use crate::report::Status;
use crate::support::{ImageSpec, PlatformSpec, PolicyProxy, TokenServer, push_image, push_index};

const REPS: usize = 5;
const LAYERS: [usize; 3] = [2 * 1024 * 1024, 512 * 1024, 32 * 1024];

/// The two images of items 2 and 3: `(label, repo:tag, protocol minimum requests)`.
pub struct Images(pub Vec<(&'static str, String, u64)>);

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
