//! Item 8: the pull economy (issue 16). Two replicas of `pullgate serve` review the same 20
//! images of a metered registry continuously while the verdict lifetime is cut to
//! [`TTL`], so each image is probed again and again; a front in front of the registry counts
//! pulls the way Docker Hub does (an index and its child one, HEADs free). Beside them a
//! third replica reviews the same images on a registry it is told is not metered, which is how
//! every registry was probed before. Then a tag moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::Ctx;
use crate::load::{self, Target};
use crate::pod::pod_review_bytes;
use crate::procs::{Server, write_docker_config};
use crate::report::Status;
use crate::support::{Accounting, ImageSpec, PolicyProxy};

const IMAGES: usize = 20;
/// The verdict lifetime of a pullable tag, cut from 10 minutes.
const TTL: Duration = Duration::from_millis(200);
/// Verdict lifetimes each image is reviewed through.
const LIFETIMES: u32 = 100;
/// How often each replica reviews the pod of 20 images.
const EVERY: Duration = Duration::from_millis(20);

/// One replica with its own counting front (so its pulls are its own).
struct Replica {
    label: &'static str,
    /// Kept running for as long as the replica probes through it.
    _front: PolicyProxy,
    hub: Arc<Accounting>,
    server: Server,
    images: Vec<String>,
}

impl Replica {
    async fn start(ctx: &Ctx, label: &'static str, metered: bool) -> anyhow::Result<Replica> {
        let hub = Arc::new(Accounting::new(1_000_000, 3600));
        let front = PolicyProxy::start_metered(&ctx.w.pki, &ctx.w.seed, hub.clone()).await;
        let policy = ctx.dir.path().join(format!("policy-{label}.yaml"));
        std::fs::write(
            &policy,
            format!(
                "registries:\n  - registry: \"{}\"\n    metered: {metered}\n",
                front.host()
            ),
        )?;
        let config = write_docker_config(ctx.dir.path(), &[]);
        let ttl = format!("{}ms", TTL.as_millis());
        let policy = policy.to_string_lossy().into_owned();
        let server = Server::start(
            ctx.dir.path(),
            &ctx.w.pki,
            &config,
            &["--policy", &policy, "--pullable-ttl", &ttl],
        )
        .await?;
        let images = (0..IMAGES)
            .map(|i| format!("{}/pulls/app{i:02}:1.0", front.host()))
            .collect();
        Ok(Replica {
            label,
            _front: front,
            hub,
            server,
            images,
        })
    }

    fn target(&self, ctx: &Ctx) -> Target {
        Target::new(
            self.server.addr,
            ctx.w.pki.client_tls(),
            "/validate?timeout=10s",
        )
    }

    /// Manifest requests the front saw (GETs and HEADs): one per probe of an image.
    fn probes(&self) -> u32 {
        let a = self.hub.account("");
        a.gets + a.heads
    }

    /// Reviews the 20-image pod every [`EVERY`] until each image has been probed
    /// [`LIFETIMES`] times (or a minute has passed).
    async fn review_through_lifetimes(&self, ctx: &Ctx) -> anyhow::Result<u32> {
        let mut conn = self.target(ctx).connect().await?;
        let body = Bytes::from(pod_review_bytes("pulls", "pulls", &self.images));
        let started = Instant::now();
        let mut reviews = 0;
        while self.probes() < LIFETIMES * IMAGES as u32
            && started.elapsed() < Duration::from_secs(60)
        {
            let answer = conn.review(body.clone()).await?;
            anyhow::ensure!(
                load::allowed(&answer),
                "{}: pod not admitted: {}",
                self.label,
                String::from_utf8_lossy(&answer)
            );
            reviews += 1;
            tokio::time::sleep(EVERY).await;
        }
        Ok(reviews)
    }
}

pub async fn pulls(ctx: &mut Ctx) -> anyhow::Result<()> {
    println!(
        "\n[8] pull economy: {IMAGES} images of a metered registry, {LIFETIMES} verdict \
         lifetimes of {} ms, 2 replicas",
        TTL.as_millis()
    );
    for i in 0..IMAGES {
        ctx.w
            .push(
                &format!("pulls/app{i:02}"),
                "1.0",
                ImageSpec::new().with_layers(&[2048, 512]),
            )
            .await;
    }
    let replicas = [
        Replica::start(ctx, "replica A", true).await?,
        Replica::start(ctx, "replica B", true).await?,
        Replica::start(ctx, "not metered", false).await?,
    ];
    let started = Instant::now();
    let reviews = futures_util::future::try_join_all(
        replicas.iter().map(|r| r.review_through_lifetimes(ctx)),
    )
    .await?;
    let took = started.elapsed();
    let [a, b, before] = &replicas;
    let (pa, pb) = (a.hub.account(""), b.hub.account(""));
    let old = before.hub.account("");
    let lifetimes = |r: &Replica| f64::from(r.probes()) / IMAGES as f64;
    ctx.report.note(format!(
        "Pull economy (8): {IMAGES} single-arch images on an anonymous registry behind a front \
         that counts pulls as Docker Hub does (a manifest GET that serves a manifest is a pull, \
         an index and its first child one, HEADs free) and answers with ratelimit-* headers. \
         Each replica is a `pullgate serve` with --pullable-ttl {} ms and its own front, marked \
         `metered: true` in its policy; every {} ms it reviews one Pod naming all {IMAGES} \
         images, until each image has been probed {LIFETIMES} times (the front's manifest \
         requests ÷ {IMAGES}). A third replica does the same with `metered: false`, as every \
         registry was probed before. Took {:.1} s; reviews sent: {}, {}, {}. Probes per image: \
         {:.0}, {:.0}, {:.0}. Manifest GETs / HEADs at the fronts: {} / {}, {} / {}, {} / {}.",
        TTL.as_millis(),
        EVERY.as_millis(),
        took.as_secs_f64(),
        reviews[0],
        reviews[1],
        reviews[2],
        lifetimes(a),
        lifetimes(b),
        lifetimes(before),
        pa.gets,
        pa.heads,
        pb.gets,
        pb.heads,
        old.gets,
        old.heads,
    ));
    ctx.report.row(
        "8",
        format!(
            "counted pulls, {IMAGES} metered images × {LIFETIMES} verdict lifetimes, 2 replicas"
        ),
        format!("{} and {}", pa.pulls, pb.pulls),
        format!("≤ {IMAGES} per replica (one per digest)"),
        Status::of(pa.pulls <= IMAGES as u32 && pb.pulls <= IMAGES as u32),
    );
    ctx.report.info(
        "8",
        "the same, registry not metered (every registry before issue 16)",
        format!("{} pulls", old.pulls),
    );

    // A tag moves: its next probe costs one pull, the ones after it none.
    let moved_repo = "pulls/app00";
    ctx.w
        .push(
            moved_repo,
            "1.0",
            ImageSpec::new().with_layers(&[4096, 1024, 256]),
        )
        .await;
    let mut conn = a.target(ctx).connect().await?;
    let one = Bytes::from(pod_review_bytes("moved", "moved", &a.images[..1]));
    let mut spent = Vec::new();
    for _ in 0..3 {
        let before = a.hub.account("").pulls;
        tokio::time::sleep(TTL + Duration::from_millis(50)).await;
        let answer = conn.review(one.clone()).await?;
        anyhow::ensure!(load::allowed(&answer), "moved tag not admitted");
        spent.push(a.hub.account("").pulls - before);
    }
    ctx.report.row(
        "8",
        "pulls for a moved tag, its next 3 verdict lifetimes",
        spent
            .iter()
            .map(|n| format!("+{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        "exactly 1 more",
        Status::of(spent == [1, 0, 0]),
    );
    Ok(())
}
