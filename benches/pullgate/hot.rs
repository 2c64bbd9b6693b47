//! Items 1 and 6: the hot path (every image cached) at saturation and at a fixed 1,000
//! reviews/s, and the server's memory during it and with 100,000 cached verdicts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::Ctx;
use crate::load::{self, Target};
use crate::pod::pod_review_bytes;
use crate::procs::{Server, write_docker_config};
use crate::report::Status;
use crate::support::ImageSpec;

/// Keep-alive connections of the load generator (the apiserver opens one per concurrent call).
const CONNECTIONS: usize = 16;
const SATURATION_WARMUP: Duration = Duration::from_secs(3);
const SATURATION: Duration = Duration::from_secs(10);
const RATE: u64 = 1_000;
const RATE_DURATION: Duration = Duration::from_secs(20);
const CACHE_ENTRIES: u64 = 100_000;
const IMAGES_PER_FILL_REVIEW: u64 = 20;

/// The server of the hot path, kept for the memory figure with a full cache.
pub struct Hot {
    pub server: Server,
    pub target: Target,
}

pub async fn hot_path(ctx: &mut Ctx) -> anyhow::Result<Hot> {
    println!("\n[1] hot path: every image cached, {CONNECTIONS} keep-alive TLS connections");
    let host = ctx.reg.host();
    let mut images = Vec::new();
    for (repo, layers) in [
        ("hot/migrate", &[64 * 1024, 8 * 1024][..]),
        ("hot/api", &[512 * 1024, 64 * 1024, 4 * 1024][..]),
        ("hot/worker", &[256 * 1024, 32 * 1024][..]),
        ("hot/envoy", &[128 * 1024, 16 * 1024, 2 * 1024][..]),
    ] {
        ctx.w
            .push(repo, "1.0", ImageSpec::new().with_layers(layers))
            .await;
        images.push(format!("{host}/{repo}:1.0"));
    }
    let config = write_docker_config(ctx.dir.path(), &[host]);
    // Refusals stay cached for the memory figure (item 6), which fills the cache with them.
    let server = Server::start(
        ctx.dir.path(),
        &ctx.w.pki,
        &config,
        &["--refusal-ttl", "1h"],
    )
    .await?;
    let target = Target::new(server.addr, ctx.w.pki.client_tls(), "/validate?timeout=10s");
    let bodies: Vec<Bytes> = (0..64)
        .map(|i| {
            Bytes::from(pod_review_bytes(
                &format!("5f0e8c1a-0b7d-4c2e-9a61-{i:012}"),
                &format!("checkout-7d9f8b6c5-{i:05}"),
                &images,
            ))
        })
        .collect();
    let size = bodies[0].len();
    ctx.report.note(format!(
        "Hot path (1): a Pod CREATE AdmissionReview of {:.1} KB (1 init container + 3 \
         containers, 4 distinct images on the token-auth registry, env, probes, resources, \
         managedFields), {CONNECTIONS} keep-alive HTTP/1.1 TLS connections from a Rust (hyper) \
         load generator in the same machine; latency from the request's send to the last byte \
         of the answer. Saturation: closed loop, {}s warm-up, {}s measured. Fixed rate: open \
         loop, {RATE} reviews/s for {}s.",
        size as f64 / 1000.0,
        SATURATION_WARMUP.as_secs(),
        SATURATION.as_secs(),
        RATE_DURATION.as_secs()
    ));

    // The first review probes the four images (cold); every later one is answered from the
    // cache.
    let (cold, answer) = load::one(&target, bodies[0].clone()).await?;
    anyhow::ensure!(
        load::allowed(&answer),
        "the hot-path pod is not admitted: {}",
        String::from_utf8_lossy(&answer)
    );
    ctx.report.info(
        "1",
        "first review (4 uncached images probed in parallel)",
        format!("{:.1} ms", cold.as_secs_f64() * 1000.0),
    );
    let bodies = Arc::new(bodies);

    // The server's CPU time over the measured window only.
    let pid = server.pid();
    let cpu = tokio::spawn(async move {
        tokio::time::sleep(SATURATION_WARMUP).await;
        let from = crate::procs::cpu_time(pid);
        tokio::time::sleep(SATURATION).await;
        crate::procs::cpu_time(pid) - from
    });
    let run = load::saturate(
        &target,
        bodies.clone(),
        CONNECTIONS,
        SATURATION_WARMUP,
        SATURATION,
    )
    .await?;
    let cpu = cpu.await?;
    anyhow::ensure!(
        run.errors == 0,
        "{} reviews failed at saturation",
        run.errors
    );
    let throughput = run.throughput();
    ctx.report.row(
        "1",
        "throughput at saturation",
        format!("{throughput:.0} reviews/s"),
        "≥ 20,000 reviews/s",
        Status::of(throughput >= 20_000.0),
    );
    ctx.report.info(
        "1",
        "latency at saturation p50 / p99 / p99.9",
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            run.ms(0.5),
            run.ms(0.99),
            run.ms(0.999)
        ),
    );
    ctx.report.info(
        "1",
        "server CPU per review at saturation (cores used)",
        format!(
            "{:.0} µs ({:.2})",
            cpu.as_secs_f64() * 1e6 / (run.completed.max(1) as f64),
            cpu.as_secs_f64() / SATURATION.as_secs_f64()
        ),
    );

    let run = load::fixed_rate(&target, bodies.clone(), CONNECTIONS, RATE, RATE_DURATION).await?;
    anyhow::ensure!(run.errors == 0, "{} reviews failed at 1,000/s", run.errors);
    ctx.report.info(
        "1",
        format!("latency at {RATE} reviews/s p50"),
        format!("{:.2} ms", run.ms(0.5)),
    );
    ctx.report.row(
        "1",
        format!("latency at {RATE} reviews/s p99"),
        format!("{:.2} ms", run.ms(0.99)),
        "≤ 2 ms",
        Status::of(run.ms(0.99) <= 2.0),
    );
    ctx.report.info(
        "1",
        format!("latency at {RATE} reviews/s p99.9 / max"),
        format!("{:.2} / {:.2} ms", run.ms(0.999), run.max_ms()),
    );
    ctx.report.info(
        "1",
        format!("reviews sent at {RATE}/s (late > 2 ms; of those, held by a busy connection)"),
        format!("{} ({}; {})", run.completed, run.late, run.held),
    );

    let peak = server.status_kib("VmHWM");
    ctx.report.info(
        "6",
        "peak RSS (VmHWM) of the server during the hot path",
        mib(peak),
    );
    Ok(Hot { server, target })
}

/// Item 6: RSS with 100,000 cached verdicts. The references are distinct tags of a repository
/// the seed registry does not have: each is one anonymous manifest GET answered 404, cached as
/// `not_found` for the refusal TTL (1 h here).
pub async fn memory(ctx: &mut Ctx, hot: &Hot) -> anyhow::Result<()> {
    println!("\n[6] memory: filling the verdict cache with {CACHE_ENTRIES} entries");
    let before = hot.server.status_kib("VmRSS");
    let probes_before = hot
        .server
        .metric("pullgate_probes_total{verdict=\"not_found\"}")
        .await;
    let seed = ctx.w.seed.host();
    let reviews = CACHE_ENTRIES / IMAGES_PER_FILL_REVIEW;
    let started = std::time::Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let conns = hot.target.connect_many(CONNECTIONS).await?;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (next, seed) = (next.clone(), seed.clone());
            tokio::spawn(async move {
                loop {
                    let r = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if r >= reviews {
                        return anyhow::Ok(());
                    }
                    let images: Vec<String> = (0..IMAGES_PER_FILL_REVIEW)
                        .map(|k| format!("{seed}/fill/app:t{}", r * IMAGES_PER_FILL_REVIEW + k))
                        .collect();
                    let body =
                        pod_review_bytes(&format!("fill-{r}"), &format!("fill-{r}"), &images);
                    conn.review(Bytes::from(body)).await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let fill_time = started.elapsed();
    // Let moka apply its pending writes and the allocator settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = hot
        .server
        .metric("pullgate_probes_total{verdict=\"not_found\"}")
        .await
        - probes_before;
    let after = hot.server.status_kib("VmRSS");
    let peak = hot.server.status_kib("VmHWM");
    ctx.report.note(format!(
        "Memory (6): VmRSS/VmHWM from /proc/PID/status of the `pullgate serve` process. The \
         cache was filled after the hot path with {reviews} reviews of {IMAGES_PER_FILL_REVIEW} \
         distinct never-pushed tags each ({probes:.0} `not_found` probes, cached for \
         --refusal-ttl 1h, cache capacity 100,000), which took {:.1}s.",
        fill_time.as_secs_f64()
    ));
    ctx.report.row(
        "6",
        format!("RSS with {CACHE_ENTRIES} cache entries"),
        mib(after),
        "≤ 64 MiB",
        Status::of(after <= 64 * 1024),
    );
    ctx.report
        .info("6", "RSS before filling (after the hot path)", mib(before));
    ctx.report.info(
        "6",
        "cache memory per entry (RSS growth / entries)",
        format!(
            "{:.0} bytes",
            (after.saturating_sub(before) as f64 * 1024.0) / probes.max(1.0)
        ),
    );
    ctx.report
        .info("6", "peak RSS (VmHWM) over the whole run", mib(peak));
    Ok(())
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
