//! What a plugin-balanced request pays to learn its group's candidate set version (`Offered::version`), by
//! group size: `kept` is a request's case (the version kept since the set last changed), `derived` a view's
//! first ask after a change, which reads every endpoint. `cargo bench -p portico --bench offered`.

// criterion's macros make undocumented functions.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use portico::upstream::endpoint::Endpoint;
use portico::upstream::offered::Offered;
use portico_plugins::{AddressMap, CandidateSource};
use std::sync::Arc;

fn group(n: usize) -> (Arc<[Arc<Endpoint>]>, Arc<AddressMap<usize>>) {
    let endpoints: Vec<Arc<Endpoint>> = (0..n)
        .map(|i| {
            let address = std::net::SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080));
            Arc::new(Endpoint::new(address.to_string(), address, 1, 1).expect("an address is an authority"))
        })
        .collect();
    let by_name = endpoints.iter().enumerate().map(|(i, e)| (e.name.clone(), i)).collect();
    (endpoints.into(), Arc::new(by_name))
}

fn version(c: &mut Criterion) {
    let mut g = c.benchmark_group("version");
    for n in [1, 100, 1000] {
        let (endpoints, by_name) = group(n);
        let kept = Offered::new(endpoints.clone(), by_name.clone());
        kept.version();
        g.bench_with_input(BenchmarkId::new("kept", n), &kept, |b, kept| b.iter(|| black_box(kept.version())));
        g.bench_with_input(BenchmarkId::new("derived", n), &n, |b, _| {
            b.iter(|| black_box(Offered::new(endpoints.clone(), by_name.clone()).version()))
        });
    }
    g.finish();
}

criterion_group!(benches, version);
criterion_main!(benches);
