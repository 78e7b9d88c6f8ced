//! The shop's shoppers during a bench phase: checkout transactions back to back on the seed's
//! drop variants, in the cart shapes a shop has (one item; several items locked all variants
//! first; several items locked item by item), their latencies and failures recorded per phase.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::{connect, ms, HOT_VARIANTS, VARIANTS};

/// Concurrent shoppers in a phase.
pub const SHOPPERS: usize = 4;
/// Length of each shopper phase.
pub const PHASE: Duration = Duration::from_secs(3);

/// What a shopper's checkout holds and in which order it locks the counter rows. A cart's
/// items are taken in ascending variant id (as a shop that sorts its cart does, so that
/// shoppers do not deadlock among themselves); the two-item shapes differ in when each drop row
/// is locked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cart {
    /// One hot drop variant: its variant row, then its drop row.
    OneHot,
    /// One cold variant (no drop row): to tell CPU contention from lock waits.
    OneCold,
    /// Two hot drop variants, all variant rows first, then their drop rows.
    TwoVariantsFirst,
    /// Two hot drop variants item by item: variant, its drop, next variant, its drop.
    TwoItemByItem,
    /// Three hot drop variants, all variant rows first, then their drop rows.
    ThreeVariantsFirst,
    /// Three hot drop variants item by item.
    ThreeItemByItem,
}

impl Cart {
    /// How the table names the shape.
    pub fn describe(self) -> &'static str {
        match self {
            Cart::OneHot => "one item",
            Cart::OneCold => "one item, cold rows",
            Cart::TwoVariantsFirst => "two items, all variants first",
            Cart::TwoItemByItem => "two items, item by item",
            Cart::ThreeVariantsFirst => "three items, all variants first",
            Cart::ThreeItemByItem => "three items, item by item",
        }
    }

    /// The variants of one checkout, ascending.
    fn pick(self) -> Vec<i64> {
        match self {
            Cart::OneCold => vec![HOT_VARIANTS + 1 + fastrand::i64(0..VARIANTS - HOT_VARIANTS)],
            Cart::OneHot => vec![1 + fastrand::i64(0..HOT_VARIANTS)],
            Cart::TwoVariantsFirst | Cart::TwoItemByItem => distinct_hot(2),
            Cart::ThreeVariantsFirst | Cart::ThreeItemByItem => distinct_hot(3),
        }
    }

    /// The counter rows in the order this shape locks them: (`is_drop`, id).
    fn lock_order(self, variants: &[i64]) -> Vec<(bool, i64)> {
        let drop_of = |v: i64| (v <= HOT_VARIANTS).then_some((true, v));
        match self {
            Cart::TwoVariantsFirst | Cart::ThreeVariantsFirst => variants
                .iter()
                .map(|&v| (false, v))
                .chain(variants.iter().filter_map(|&v| drop_of(v)))
                .collect(),
            _ => variants
                .iter()
                .flat_map(|&v| std::iter::once((false, v)).chain(drop_of(v)))
                .collect(),
        }
    }
}

/// `n` distinct hot drop variants, ascending.
fn distinct_hot(n: usize) -> Vec<i64> {
    let mut v: Vec<i64> = Vec::with_capacity(n);
    while v.len() < n {
        let candidate = 1 + fastrand::i64(0..HOT_VARIANTS);
        if !v.contains(&candidate) {
            v.push(candidate);
        }
    }
    v.sort_unstable();
    v
}

/// Checkout latencies (ms) and failures recorded per phase; phase 0 records nothing.
#[derive(Default)]
pub struct Checkouts {
    phase: AtomicUsize,
    stop: AtomicBool,
    latencies: Mutex<Vec<(usize, f64)>>,
    /// How long each checkout held its first counter row: from that row's update returning
    /// (the lock granted) to the commit.
    holds: Mutex<Vec<(usize, f64)>>,
    failures: Mutex<Vec<(usize, String)>>,
}

/// One checkout of `cart`: lock and bump each counter row in the cart's order, make an
/// order, insert its reservations (due in 15 minutes), commit. Returns how long it held its
/// first counter row.
async fn checkout(
    c: &mut Client,
    cart: Cart,
    number: &str,
) -> Result<Duration, tokio_postgres::Error> {
    let variants = cart.pick();
    let tx = c.transaction().await?;
    let mut first_held = None;
    for (is_drop, id) in cart.lock_order(&variants) {
        let table = if is_drop {
            "drops_dropproduct"
        } else {
            "products_productvariant"
        };
        tx.execute(
            &format!("UPDATE {table} SET reserved_quantity = reserved_quantity + 1 WHERE id = $1"),
            &[&id],
        )
        .await?;
        first_held.get_or_insert_with(Instant::now);
    }
    tx.execute(
        "WITH o AS (INSERT INTO orders_order (order_number) VALUES ($1) RETURNING id)
         INSERT INTO orders_inventoryreservation (order_id, product_variant_id, drop_product_id, quantity, expires_at)
         SELECT o.id, v, CASE WHEN v <= $3 THEN v END, 1, now() + interval '15 minutes'
           FROM o, unnest($2::int8[]) v",
        &[&number, &variants, &HOT_VARIANTS],
    )
    .await?;
    tx.commit().await?;
    Ok(first_held.map_or(Duration::ZERO, |at| at.elapsed()))
}

/// One shopper: checkouts of `cart` back to back until told to stop, each timed under the
/// phase it started in (a checkout that straddles a phase change is not recorded).
async fn shopper(url: String, checkouts: Arc<Checkouts>, cart: Cart, n: u64) {
    let mut c = connect(&url).await;
    let mut k = n * 1_000_000;
    while !checkouts.stop.load(Ordering::Relaxed) {
        k += 1;
        let phase = checkouts.phase.load(Ordering::Relaxed);
        let started = Instant::now();
        let number = format!("S-{k}-{}", fastrand::u32(..));
        let outcome = checkout(&mut c, cart, &number).await;
        if phase == 0 || checkouts.phase.load(Ordering::Relaxed) != phase {
            continue;
        }
        match outcome {
            Ok(held) => {
                let took = ms(started.elapsed());
                checkouts.latencies.lock().unwrap().push((phase, took));
                checkouts.holds.lock().unwrap().push((phase, ms(held)));
            }
            Err(e) => checkouts
                .failures
                .lock()
                .unwrap()
                .push((phase, e.to_string())),
        }
    }
}

/// A phase's checkouts: how many, p50, p99 and max (ms), and how many failed (with the first
/// failure's message).
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub n: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Median and 99th percentile of how long a checkout held its first counter row.
    pub hold_p50: f64,
    pub hold_p99: f64,
    pub failed: usize,
    pub first_failure: Option<String>,
}

/// The samples of `phase` in `list`, sorted.
fn samples(list: &Mutex<Vec<(usize, f64)>>, phase: usize) -> Vec<f64> {
    let mut v: Vec<f64> = list
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| *p == phase)
        .map(|(_, l)| *l)
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The latencies and failures of `phase`.
fn latency_stats(checkouts: &Checkouts, phase: usize) -> Latency {
    let v = samples(&checkouts.latencies, phase);
    let failures = checkouts.failures.lock().unwrap();
    let mut failed = failures.iter().filter(|(p, _)| *p == phase);
    let first_failure = failed.clone().next().map(|(_, e)| e.clone());
    let failed = failed.by_ref().count();
    if v.is_empty() {
        return Latency {
            failed,
            first_failure,
            ..Latency::default()
        };
    }
    let at = |v: &[f64], q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let holds = samples(&checkouts.holds, phase);
    Latency {
        n: v.len(),
        p50: at(&v, 0.5),
        p99: at(&v, 0.99),
        max: v[v.len() - 1],
        hold_p50: at(&holds, 0.5),
        hold_p99: at(&holds, 0.99),
        failed,
        first_failure,
    }
}

/// One phase: `SHOPPERS` shoppers with carts of `cart` on `url`, their latencies recorded under
/// `phase` while `work` runs and for `PHASE` at least.
pub async fn phase<T, F>(url: &str, cart: Cart, phase: usize, work: F) -> (Latency, T)
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let checkouts = Arc::new(Checkouts::default());
    let tasks: Vec<_> = (0..SHOPPERS)
        .map(|n| {
            tokio::spawn(shopper(
                url.to_string(),
                checkouts.clone(),
                cart,
                n as u64 + 1,
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    checkouts.phase.store(phase, Ordering::Relaxed);
    let work = tokio::spawn(work);
    tokio::time::sleep(PHASE).await;
    let result = work.await.unwrap();
    checkouts.phase.store(0, Ordering::Relaxed);
    checkouts.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    (latency_stats(&checkouts, phase), result)
}
