//! serde_json against sonic-rs and simd-json on the JSON every VSP call does: encode the request
//! envelope, decode it into structs, encode the response envelope, decode it into structs (the
//! four steps of the "JSON-only ceiling" in `benches/rpc.rs`), on one thread, no I/O.
//!
//! `cargo bench --bench json` (`VSP_BENCH_SECS`, default 1, per library and workload; medians
//! of `VSP_BENCH_ROUNDS`, default 3, interleaved). Two workloads: `get_user` (a 3-field struct
//! back, the rpc bench's workload) and `list_users` (100 of them, about 7 KiB). simd-json parses
//! in place, so its decode steps copy the frame into a scratch buffer first, as a server would
//! have to (the frame is shared, immutable `Bytes`).
//!
//! The result decides issue 31.5: a library is worth adopting only if it pays at least 1.2x end
//! to end, and JSON is only a share of a call's CPU (the note and `benches/README.md` say which).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Header {
    request_id: u64,
    service: String,
    endpoint: String,
    is_response: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct Args {
    user_id: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct User {
    id: String,
    name: String,
    email: String,
}

#[derive(Serialize, Deserialize)]
struct Envelope<B> {
    header: Header,
    body: B,
}

#[derive(Clone, Copy, PartialEq)]
enum Library {
    SerdeJson,
    SonicRs,
    SimdJson,
}

impl Library {
    const ALL: [Library; 3] = [Library::SerdeJson, Library::SonicRs, Library::SimdJson];

    fn name(self) -> &'static str {
        match self {
            Library::SerdeJson => "serde_json",
            Library::SonicRs => "sonic-rs",
            Library::SimdJson => "simd-json",
        }
    }

    fn encode<T: Serialize>(self, out: &mut Vec<u8>, value: &T) {
        out.clear();
        match self {
            Library::SerdeJson => serde_json::to_writer(&mut *out, value).unwrap(),
            Library::SonicRs => sonic_rs::to_writer(&mut *out, value).unwrap(),
            Library::SimdJson => simd_json::to_writer(&mut *out, value).unwrap(),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(self, json: &[u8], scratch: &mut Vec<u8>) -> T {
        match self {
            Library::SerdeJson => serde_json::from_slice(json).unwrap(),
            Library::SonicRs => sonic_rs::from_slice(json).unwrap(),
            Library::SimdJson => {
                scratch.clear();
                scratch.extend_from_slice(json);
                simd_json::serde::from_slice(scratch).unwrap()
            }
        }
    }
}

fn header(id: u64, is_response: bool) -> Header {
    Header {
        request_id: id,
        service: "user-service".into(),
        endpoint: "get_user".into(),
        is_response,
        timeout_ms: (!is_response).then_some(30_000),
    }
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        name: "John Doe".into(),
        email: "john@example.com".into(),
    }
}

/// One call's four JSON steps; the response carries `users` (`None`: one user, unwrapped).
fn one_call(library: Library, id: u64, users: Option<&[User]>, bufs: &mut [Vec<u8>; 3]) {
    let [request, response, scratch] = bufs;
    let args = Envelope {
        header: header(id, false),
        body: Args {
            user_id: "123".into(),
        },
    };
    library.encode(request, &args);
    let decoded: Envelope<Args> = library.decode(request, scratch);
    let header = Header {
        is_response: true,
        timeout_ms: None,
        ..decoded.header
    };
    match users {
        None => {
            let answer = Envelope {
                header,
                body: user(&decoded.body.user_id),
            };
            library.encode(response, &answer);
            let back: Envelope<User> = library.decode(response, scratch);
            std::hint::black_box(back);
        }
        Some(users) => {
            // Built once: only the JSON steps are timed, not making the list.
            let answer = Envelope {
                header,
                body: users,
            };
            library.encode(response, &answer);
            let back: Envelope<Vec<User>> = library.decode(response, scratch);
            std::hint::black_box(back);
        }
    }
}

/// Calls per second of `library` on the workload, on this thread, for `run`.
fn rate(library: Library, users: Option<usize>, run: Duration) -> f64 {
    let list = users.map(|n| vec![user("123"); n]);
    let users = list.as_deref();
    let mut bufs = [Vec::new(), Vec::new(), Vec::new()];
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < run {
        for _ in 0..64 {
            calls += 1;
            one_call(library, calls, users, &mut bufs);
        }
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn main() {
    let secs: f64 = std::env::var("VSP_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let rounds: usize = std::env::var("VSP_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let run = Duration::from_secs_f64(secs);
    // Each library's output is checked against serde_json's before anything is timed.
    for library in Library::ALL {
        let mut out = Vec::new();
        library.encode(&mut out, &header(7, false));
        let back: Header = Library::SerdeJson.decode(&out, &mut Vec::new());
        assert_eq!(
            (back.request_id, back.timeout_ms),
            (7, Some(30_000)),
            "{} wrote JSON serde_json reads differently",
            library.name()
        );
    }
    println!("# JSON libraries on VSP's four JSON steps per call (one thread, no I/O)\n");
    println!("{rounds} rounds of {run:?} per library and workload, interleaved; medians.\n");
    println!("| workload | library | calls/s | ns per call | vs serde_json |");
    println!("|---|---|---:|---:|---:|");
    for (label, users) in [("get_user", None), ("list_users (100)", Some(100))] {
        let mut rates = vec![Vec::new(); Library::ALL.len()];
        for _ in 0..rounds {
            for (i, library) in Library::ALL.iter().enumerate() {
                rates[i].push(rate(*library, users, run));
            }
        }
        let rates: Vec<f64> = rates.into_iter().map(median).collect();
        for (library, rate) in Library::ALL.iter().zip(&rates) {
            println!(
                "| {label} | {} | {rate:.0} | {:.0} | {:.2}x |",
                library.name(),
                1e9 / rate,
                rate / rates[0]
            );
        }
    }
}
