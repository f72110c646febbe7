use arrow::array::{Array, Float64Array, TimestampMillisecondArray};
use portico_anomaly::store::{list_ipc_files, read_ipc_file, read_ipc_stream, SeriesStore, StoreOptions};
use portico_anomaly::Tick;

fn tick(i: i64) -> Tick {
    let mut t = Tick::new(1_000 + i * 1000).with("a", i as f64 * 0.5);
    if i >= 5 {
        t.set("late", -(i as f64));
    }
    t
}

#[test]
fn ring_is_bounded_and_keeps_newest() {
    let mut s = SeriesStore::new(StoreOptions { capacity: 50, batch_rows: 7, ..Default::default() }).unwrap();
    for i in 0..200 {
        s.push(&tick(i)).unwrap();
        assert!(s.len() <= 50, "len {} at {i}", s.len());
    }
    assert_eq!(s.len(), 50);
    let json = s.export_json(0).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 50);
    assert_eq!(rows[0]["timestamp"], 1_000 + 150 * 1000);
    assert_eq!(rows[49]["a"], 199.0 * 0.5);
}

#[test]
fn ipc_stream_round_trip_with_late_series_null() {
    let mut s = SeriesStore::new(StoreOptions { capacity: 100, batch_rows: 4, ..Default::default() }).unwrap();
    for i in 0..10 {
        s.push(&tick(i)).unwrap();
    }
    let bytes = s.export_ipc_stream(0).unwrap();
    let batches = read_ipc_stream(&bytes).unwrap();
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["timestamp", "a", "late"]);
    let (mut ts, mut a, mut late) = (Vec::new(), Vec::new(), Vec::new());
    for b in &batches {
        let t = b.column(0).as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
        let c1 = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
        let c2 = b.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..b.num_rows() {
            ts.push(t.value(i));
            a.push(c1.value(i));
            late.push(if c2.is_null(i) { None } else { Some(c2.value(i)) });
        }
    }
    assert_eq!(ts, (0..10).map(|i| 1_000 + i * 1000).collect::<Vec<_>>());
    assert_eq!(a, (0..10).map(|i| i as f64 * 0.5).collect::<Vec<_>>());
    assert_eq!(late[..5], [None; 5]);
    assert_eq!(late[5..], (5..10).map(|i| Some(-(i as f64))).collect::<Vec<_>>()[..]);

    // `since` filters rows; JSON shows nulls for the late series.
    let json = s.export_json(1_000 + 4 * 1000).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert!(rows[0]["late"].is_null());
    assert_eq!(rows[1]["late"], -5.0);
    assert_eq!(read_ipc_stream(&s.export_ipc_stream(i64::MAX).unwrap()).unwrap().len(), 0);
}

#[test]
fn rotation_writes_ipc_files_and_enforces_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        capacity: 10,
        batch_rows: 5,
        dir: Some(dir.path().to_path_buf()),
        max_bytes: u64::MAX,
        file_rows: 20,
    };
    let mut s = SeriesStore::new(opts.clone()).unwrap();
    for i in 0..45 {
        s.push(&tick(i)).unwrap();
    }
    s.flush().unwrap();
    let files = list_ipc_files(dir.path()).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    // Disk keeps everything even though memory holds only 10 ticks.
    let mut values = Vec::new();
    for f in &files {
        for b in read_ipc_file(f).unwrap() {
            let c = b.column_by_name("a").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
            values.extend(c.values().iter().copied());
        }
    }
    assert_eq!(values, (0..45).map(|i| i as f64 * 0.5).collect::<Vec<_>>());

    // A cap smaller than two files keeps only the newest ones.
    let one = std::fs::metadata(&files[0]).unwrap().len();
    let dir2 = tempfile::tempdir().unwrap();
    let mut s2 =
        SeriesStore::new(StoreOptions { dir: Some(dir2.path().to_path_buf()), max_bytes: one * 2, ..opts }).unwrap();
    for i in 0..100 {
        s2.push(&tick(i)).unwrap();
    }
    let files2 = list_ipc_files(dir2.path()).unwrap();
    let total: u64 = files2.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert!(total <= one * 2 + one / 2, "total {total} cap {}", one * 2);
    assert!(files2.len() < 5);
    let last = read_ipc_file(files2.last().unwrap()).unwrap();
    let ts = last[0].column(0).as_any().downcast_ref::<TimestampMillisecondArray>().unwrap();
    assert_eq!(ts.value(ts.len() - 1), 1_000 + 99 * 1000, "newest file survives");
}
