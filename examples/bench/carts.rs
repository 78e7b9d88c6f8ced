//! Carts against a large drain: for each cart shape (one item; two or three items locked all
//! variants first or item by item), on a fresh copy of the shoppers' seed, the shoppers'
//! latency while nothing drains and while this project drains 100,000 due reservations
//! concentrated on the same hot drop rows; side by side, with the targets.

use std::fmt::Write as _;

use crate::shoppers::{self, Cart, PHASE, SHOPPERS};
use crate::{deferred_pct, drain_with_defaults, ms, Bench, HOT_VARIANTS};

/// The shapes compared, in table order; one item on cold rows tells what the drain costs the
/// shoppers in CPU (2 cores) from what it costs them in lock waits.
const SHAPES: [Cart; 6] = [
    Cart::OneHot,
    Cart::TwoVariantsFirst,
    Cart::TwoItemByItem,
    Cart::ThreeVariantsFirst,
    Cart::ThreeItemByItem,
    Cart::OneCold,
];

impl Bench {
    /// The carts section: one row per shape and repetition, each on a fresh copy of `seed`.
    pub async fn carts(&self, seed: &str, reps: usize) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "\n### Carts of several items against a drain (N = 100,000, defaults)\n\n\
             {SHOPPERS} shoppers check out back to back on the {HOT_VARIANTS} hot drop variants the \
             backlog is concentrated on, with carts of one item or of two or three distinct hot \
             variants (taken in ascending id), locking either all variant rows first and then the \
             drop rows, or item by item (variant, its drop, next variant, its drop). For each \
             shape, on a fresh copy of one seed: a quiet phase of {} s, then a phase that lasts \
             as long as this project's drain of 100,000 due reservations. Drain ratio: that \
             drain's time over the same drain on a fresh copy with no shopper about, measured \
             just before each repetition. {reps} interleaved repetition(s). The release's hot \
             hold: how long each batch held the hot rows, from taking them to its commit (the \
             run report's `hot_hold_ms_*`); the checkout's hold: from a checkout's first counter \
             row granted to its commit, during the drain.\n",
            PHASE.as_secs()
        );
        let _ = writeln!(
            md,
            "| cart | quiet checkouts | quiet p99 / max (ms) | drain checkouts | drain p99 / max (ms) | p99 ratio (≤ 1.3) | max over quiet (≤ +50 ms) | failed | drain (ms) | drain ratio (≤ 3) | deferred (< 1 %) | queue batches | held wait (ms) | batches (p50 ms) | release's hot hold p50 / p99 / max (ms) | checkout's hold p50 / p99 (ms) |"
        );
        let _ = writeln!(
            md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        // BENCH_CARTS='one item|two items, item by item' (the table's names) runs those only.
        let wanted = std::env::var("BENCH_CARTS").unwrap_or_default();
        let shapes: Vec<Cart> = SHAPES
            .into_iter()
            .filter(|c| wanted.is_empty() || wanted.split('|').any(|w| c.describe() == w.trim()))
            .collect();
        for rep in 1..=reps {
            eprintln!("carts: the drain with no shopper about (repetition {rep}) ...");
            let url = self.copy(seed, "bench_carts").await;
            let (alone, _) = drain_with_defaults(url).await;
            for &cart in &shapes {
                eprintln!("carts: {} (repetition {rep}) ...", cart.describe());
                let url = self.copy(seed, "bench_carts").await;
                let (quiet, ()) = shoppers::phase(&url, cart, 1, async {}).await;
                let (drain, (took, r)) =
                    shoppers::phase(&url, cart, 2, drain_with_defaults(url.clone())).await;
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} / {:.1} | {} | {:.1} / {:.1} | **{:.2}** | **{:+.1}** | {} | {:.0} | **{:.1}** | {:.2} % | {} | {:.0} | {} ({:.1}) | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} |",
                    cart.describe(),
                    quiet.n,
                    quiet.p99,
                    quiet.max,
                    drain.n,
                    drain.p99,
                    drain.max,
                    drain.p99 / quiet.p99.max(f64::EPSILON),
                    drain.max - quiet.max,
                    quiet.failed + drain.failed,
                    ms(took),
                    ms(took) / ms(alone),
                    deferred_pct(&r),
                    r.counts.queue_waits,
                    r.counts.held_wait_ms,
                    r.batches,
                    r.batch_ms_p50,
                    r.hot_hold_ms_p50,
                    r.hot_hold_ms_p99,
                    r.hot_hold_ms_max,
                    drain.hold_p50,
                    drain.hold_p99,
                );
                for failure in [&quiet.first_failure, &drain.first_failure]
                    .into_iter()
                    .flatten()
                {
                    let _ = writeln!(
                        md,
                        "\nfirst failed checkout ({}): {failure}\n",
                        cart.describe()
                    );
                }
            }
        }
        md
    }
}
