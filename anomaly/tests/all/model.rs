use std::path::PathBuf;

use portico_anomaly::model::SplitMix64;
use portico_anomaly::store::{write_ipc_file, SeriesStore, StoreOptions};
use portico_anomaly::{train, train_series, Forecaster, Tick, TrainOptions};

fn seasonal(seed: u64, n: usize) -> Vec<f64> {
    let mut r = SplitMix64::new(seed);
    let mut ar = 0.0;
    (0..n)
        .map(|i| {
            ar = 0.9 * ar + 0.3 * r.normal();
            100.0 + 20.0 * (i as f64 / 15.0).sin() + 3.0 * ar
        })
        .collect()
}

fn small_opts() -> TrainOptions {
    TrainOptions { epochs: 3, hidden: 8, window: 16, segment: 96, batch: 8, lr: 0.01, ..Default::default() }
}

#[test]
fn save_load_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let zs: Vec<f32> = (0..100).map(|i| ((i as f32) / 7.0).sin()).collect();
    for m in [Forecaster::untrained(8, 16, 3).unwrap(), Forecaster::bundled().unwrap()] {
        let p = dir.path().join("m.safetensors");
        m.save(&p).unwrap();
        let back = Forecaster::load(&p).unwrap();
        assert_eq!(back.meta(), m.meta());
        assert_eq!(back.forecast_sequence(&zs).unwrap(), m.forecast_sequence(&zs).unwrap());
    }
    // Sidecar/weights mismatch is detected.
    let p = dir.path().join("m.safetensors");
    let mut meta = Forecaster::bundled().unwrap().meta().clone();
    meta.hidden += 1;
    std::fs::write(dir.path().join("m.json"), serde_json::to_string(&meta).unwrap()).unwrap();
    assert!(Forecaster::load(&p).is_err());
}

#[test]
fn training_is_deterministic_and_beats_untrained() {
    let data: Vec<(String, Vec<f64>)> = (0..3).map(|i| (format!("s{i}"), seasonal(i, 1200))).collect();
    let mut epochs_seen = 0;
    let (m1, r1) = train_series(&data, &small_opts(), &mut |_| epochs_seen += 1).unwrap();
    let (m2, r2) = train_series(&data, &small_opts(), &mut |_| {}).unwrap();
    assert_eq!(epochs_seen, 3);
    assert_eq!(r1.train_loss, r2.train_loss);
    assert_eq!(r1.val_loss, r2.val_loss);
    let zs: Vec<f32> = (0..50).map(|i| (i as f32 / 5.0).cos()).collect();
    assert_eq!(m1.forecast_sequence(&zs).unwrap(), m2.forecast_sequence(&zs).unwrap());
    assert!(r1.val_loss < 0.5 * r1.initial_val_loss, "trained {} vs untrained {}", r1.val_loss, r1.initial_val_loss);
    let (_, r3) = train_series(&data, &TrainOptions { seed: 99, ..small_opts() }, &mut |_| {}).unwrap();
    assert_ne!(r3.val_loss, r1.val_loss, "a different seed gives a different run");
}

#[test]
fn trains_from_csv_and_ipc_files_and_writes_model() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("a.csv");
    let mut text = String::from("timestamp,value,label\n");
    for (i, v) in seasonal(5, 900).iter().enumerate() {
        text.push_str(&format!("{i},{v},0\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let mut store = SeriesStore::new(StoreOptions { capacity: 10_000, ..Default::default() }).unwrap();
    for (i, v) in seasonal(6, 900).iter().enumerate() {
        store.push(&Tick::new(i as i64).with("upstream.app.qps", *v)).unwrap();
    }
    let (_, batches) = store.batches_since(0).unwrap();
    let ipc = dir.path().join("b.arrow");
    write_ipc_file(&ipc, &batches).unwrap();
    let out = dir.path().join("out/model.safetensors");
    let files: Vec<PathBuf> = vec![csv, ipc];
    let series = portico_anomaly::train::load_series(&files).unwrap();
    let names: Vec<&str> = series.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["a.value", "b.upstream.app.qps"], "label column is not a series");
    let (m, report) =
        train(&files, &TrainOptions { out: Some(out.clone()), epochs: 1, ..small_opts() }, &mut |_| {}).unwrap();
    assert_eq!(report.series, 2);
    let loaded = Forecaster::load(&out).unwrap();
    assert_eq!(loaded.meta().training.series, 2);
    assert_eq!(loaded.meta().training.val_loss, report.val_loss);
    assert_eq!(loaded.forecast_sequence(&[0.1, 0.2]).unwrap(), m.forecast_sequence(&[0.1, 0.2]).unwrap());
}
