//! Token verification cost relative to the bare HMAC-SHA-256 it contains.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use hmac::{Hmac, Mac};
use postern_token::{generate, hash_secret, parse, HashKey, TokenHash, TokenKind};
use sha2::Sha256;
use uuid::Uuid;

const MAP_ENTRIES: usize = 100_000;
const RATIO_ITERATIONS: u32 = 200_000;
const RATIO_ROUNDS: usize = 5;
const KEY: [u8; 32] = [0x42; 32];
const SECRET: [u8; 32] = [0x17; 32];

fn main() {
    let fixture = Fixture::new();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
        .configure_from_args();
    let mut group = criterion.benchmark_group("token_verify");
    group.bench_function("bare_hmac_sha256", |b| {
        b.iter(|| bare_hmac(black_box(&fixture.bare_input)))
    });
    group.bench_function("full_verify", |b| {
        b.iter(|| fixture.full_verify(black_box(&fixture.token)))
    });
    group.finish();
    criterion.final_summary();

    // `cargo bench` passes --bench; plain `cargo test --benches` runs a quick smoke test only.
    if std::env::args().any(|arg| arg == "--bench") {
        print_ratio(&fixture);
    }
}

struct Fixture {
    key: HashKey,
    token: String,
    bare_input: Vec<u8>,
    stored: HashMap<Uuid, TokenHash>,
}

impl Fixture {
    fn new() -> Self {
        let key = HashKey::from_bytes(KEY);
        let mut stored = HashMap::with_capacity(MAP_ENTRIES);
        let mut token = None;
        for i in 0..MAP_ENTRIES {
            let new = generate(TokenKind::Client, Uuid::new_v4(), &key);
            stored.insert(new.id, new.hash);
            if i == MAP_ENTRIES / 2 {
                token = Some(new.secret.expose().to_owned());
            }
        }
        let token = token.expect("map is not empty");
        assert!(Self::verify_with(&key, &stored, &token));

        let id = Uuid::new_v4();
        let mut bare_input = TokenKind::Client.as_str().as_bytes().to_vec();
        bare_input.push(0);
        bare_input.extend_from_slice(id.as_bytes());
        bare_input.extend_from_slice(&SECRET);
        assert_eq!(
            bare_hmac(&bare_input),
            *hash_secret(&key, TokenKind::Client, id, &SECRET).as_bytes(),
            "bare HMAC must hash the same bytes as hash_secret"
        );

        Fixture {
            key,
            token,
            bare_input,
            stored,
        }
    }

    fn full_verify(&self, token: &str) -> bool {
        Self::verify_with(&self.key, &self.stored, token)
    }

    fn verify_with(key: &HashKey, stored: &HashMap<Uuid, TokenHash>, token: &str) -> bool {
        let Ok(parsed) = parse(token) else {
            return false;
        };
        let Some(hash) = stored.get(&parsed.id) else {
            return false;
        };
        parsed.verify(key, hash)
    }
}

fn bare_hmac(input: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(&KEY).expect("HMAC takes any key length");
    mac.update(input);
    mac.finalize().into_bytes().into()
}

fn print_ratio(fixture: &Fixture) {
    let mut best_full = Duration::MAX;
    let mut best_bare = Duration::MAX;
    for _ in 0..RATIO_ROUNDS {
        let start = Instant::now();
        for _ in 0..RATIO_ITERATIONS {
            black_box(fixture.full_verify(black_box(&fixture.token)));
        }
        best_full = best_full.min(start.elapsed());

        let start = Instant::now();
        for _ in 0..RATIO_ITERATIONS {
            black_box(bare_hmac(black_box(&fixture.bare_input)));
        }
        best_bare = best_bare.min(start.elapsed());
    }
    let full_ns = best_full.as_nanos() as f64 / f64::from(RATIO_ITERATIONS);
    let bare_ns = best_bare.as_nanos() as f64 / f64::from(RATIO_ITERATIONS);
    println!(
        "token_verify: full_verify {full_ns:.1} ns/op, bare_hmac {bare_ns:.1} ns/op, full/bare ratio {:.2} (target: full verification at least half as fast as the bare hash, i.e. ratio <= 2.0)",
        full_ns / bare_ns
    );
}
