//! Tick history as Arrow record batches: a bounded in-memory ring, optional rotation to Arrow IPC
//! files with a size cap, and export as Arrow IPC stream bytes or JSON records.
//!
//! Arrow was chosen so operators can pull `GET /anomaly/series?format=arrow` straight into
//! pandas/polars (`pyarrow.ipc.open_stream`) and so training reads exactly what production stored.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, BufWriter, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, Float64Builder, TimestampMillisecondArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::ipc::reader::{FileReader, StreamReader};
use arrow::ipc::writer::{FileWriter, StreamWriter};
use arrow::record_batch::RecordBatch;

use crate::error::{AnomalyError, Result};
use crate::sample::Tick;

/// Name of the timestamp column (Timestamp(ms), non-null).
pub const TIMESTAMP: &str = "timestamp";
/// Extension of rotated files.
pub const IPC_EXT: &str = "arrow";

/// Sizing for a [`SeriesStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Maximum ticks kept in memory; the oldest are dropped first.
    pub capacity: usize,
    /// Ticks buffered before they are sealed into one record batch (amortises Arrow overhead).
    pub batch_rows: usize,
    /// Where rotated IPC files go; `None` disables disk rotation.
    pub dir: Option<PathBuf>,
    /// Cap on the total size of `*.arrow` files in `dir`; oldest files are deleted first.
    pub max_bytes: u64,
    /// Ticks per rotated file.
    pub file_rows: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { capacity: 21_600, batch_rows: 64, dir: None, max_bytes: 256 << 20, file_rows: 3600 }
    }
}

/// The schema for a set of series, in the given column order.
pub fn schema_for(series: &[String]) -> SchemaRef {
    let mut fields = Vec::with_capacity(series.len() + 1);
    fields.push(Field::new(TIMESTAMP, DataType::Timestamp(TimeUnit::Millisecond, None), false));
    fields.extend(series.iter().map(|s| Field::new(s, DataType::Float64, true)));
    Arc::new(Schema::new(fields))
}

/// Build one record batch from ticks over `series`; absent and non-finite values become null.
pub fn ticks_to_batch(ticks: &[Tick], series: &[String]) -> Result<RecordBatch> {
    let ts: TimestampMillisecondArray = ticks.iter().map(|t| Some(t.timestamp_ms)).collect();
    let mut cols: Vec<ArrayRef> = vec![Arc::new(ts)];
    for s in series {
        let mut b = Float64Builder::with_capacity(ticks.len());
        for t in ticks {
            b.append_option(t.values.get(s).copied().filter(|v| v.is_finite()));
        }
        cols.push(Arc::new(b.finish()));
    }
    Ok(RecordBatch::try_new(schema_for(series), cols)?)
}

/// Re-shape `batch` to `schema` (a superset of its columns), filling missing series with nulls.
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) => c.clone(),
            None => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

fn timestamps(batch: &RecordBatch) -> Result<&TimestampMillisecondArray> {
    batch
        .column_by_name(TIMESTAMP)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
        .ok_or_else(|| AnomalyError::Data("batch has no timestamp(ms) column".into()))
}

/// Rows with `timestamp >= since_ms` (filtered per row, so out-of-order clocks are handled).
fn since(batch: &RecordBatch, since_ms: i64) -> Result<Option<RecordBatch>> {
    let ts = timestamps(batch)?;
    if !ts.is_empty() && ts.values().iter().all(|&t| t >= since_ms) {
        return Ok(Some(batch.clone()));
    }
    let mask: BooleanArray = ts.values().iter().map(|&t| Some(t >= since_ms)).collect();
    let out = filter_record_batch(batch, &mask)?;
    Ok((out.num_rows() > 0).then_some(out))
}

/// Bounded tick history. Not thread-safe by itself: the detector wraps it in a mutex.
#[derive(Debug)]
pub struct SeriesStore {
    opts: StoreOptions,
    series: Vec<String>,
    sealed: VecDeque<RecordBatch>,
    sealed_rows: usize,
    pending: Vec<Tick>,
    disk_pending: Vec<Tick>,
}

impl SeriesStore {
    /// Create a store, creating `opts.dir` if rotation is enabled.
    pub fn new(opts: StoreOptions) -> Result<Self> {
        if opts.capacity == 0 || opts.batch_rows == 0 || opts.file_rows == 0 {
            return Err(AnomalyError::Config("store: capacity, batch_rows and file_rows must be > 0".into()));
        }
        if let Some(dir) = &opts.dir {
            std::fs::create_dir_all(dir).map_err(|e| AnomalyError::io(dir, e))?;
        }
        Ok(SeriesStore {
            opts,
            series: Vec::new(),
            sealed: VecDeque::new(),
            sealed_rows: 0,
            pending: Vec::new(),
            disk_pending: Vec::new(),
        })
    }

    /// Series seen so far, in order of first appearance (the export column order).
    pub fn series(&self) -> &[String] {
        &self.series
    }

    /// Ticks currently held in memory (never more than the capacity).
    pub fn len(&self) -> usize {
        self.sealed_rows + self.pending.len()
    }

    /// Whether no tick is held in memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append one tick; seals a batch, trims the ring and rotates to disk as needed.
    pub fn push(&mut self, tick: &Tick) -> Result<()> {
        for name in tick.values.keys() {
            if !self.series.iter().any(|s| s == name) {
                self.series.push(name.clone());
            }
        }
        self.pending.push(tick.clone());
        if self.opts.dir.is_some() {
            self.disk_pending.push(tick.clone());
            if self.disk_pending.len() >= self.opts.file_rows {
                self.rotate()?;
            }
        }
        if self.pending.len() >= self.opts.batch_rows {
            let batch = ticks_to_batch(&self.pending, &self.series)?;
            self.pending.clear();
            self.sealed_rows += batch.num_rows();
            self.sealed.push_back(batch);
        }
        self.trim();
        Ok(())
    }

    fn trim(&mut self) {
        while self.len() > self.opts.capacity {
            let excess = self.len() - self.opts.capacity;
            let Some(front) = self.sealed.pop_front() else {
                // Capacity smaller than one pending batch: drop from the pending buffer.
                let n = excess.min(self.pending.len());
                self.pending.drain(..n);
                return;
            };
            let rows = front.num_rows();
            self.sealed_rows -= rows;
            if rows > excess {
                let kept = front.slice(excess, rows - excess);
                self.sealed_rows += kept.num_rows();
                self.sealed.push_front(kept);
            }
        }
    }

    /// Write buffered ticks to a new IPC file now (e.g. at shutdown). No-op without a store dir.
    pub fn flush(&mut self) -> Result<()> {
        if self.opts.dir.is_some() && !self.disk_pending.is_empty() {
            self.rotate()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<()> {
        let Some(dir) = self.opts.dir.clone() else { return Ok(()) };
        let ticks = std::mem::take(&mut self.disk_pending);
        let (Some(first), Some(last)) = (ticks.first(), ticks.last()) else { return Ok(()) };
        let batch = ticks_to_batch(&ticks, &self.series)?;
        let name = format!("series-{:016}-{:016}.{IPC_EXT}", first.timestamp_ms.max(0), last.timestamp_ms.max(0));
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        write_ipc_file(&tmp, &[batch])?;
        std::fs::rename(&tmp, &path).map_err(|e| AnomalyError::io(&path, e))?;
        enforce_size_cap(&dir, self.opts.max_bytes, &path)?;
        Ok(())
    }

    /// In-memory batches with rows at or after `since_ms`, conformed to one schema covering all
    /// series; series that appeared later are null in earlier rows.
    pub fn batches_since(&self, since_ms: i64) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let schema = schema_for(&self.series);
        let mut out = Vec::new();
        let pending = if self.pending.is_empty() { None } else { Some(ticks_to_batch(&self.pending, &self.series)?) };
        for b in self.sealed.iter().chain(pending.iter()) {
            if let Some(b) = since(b, since_ms)? {
                out.push(conform(&b, &schema)?);
            }
        }
        Ok((schema, out))
    }

    /// Arrow IPC *stream* bytes (what `pyarrow.ipc.open_stream` / `polars.read_ipc_stream` read).
    pub fn export_ipc_stream(&self, since_ms: i64) -> Result<Vec<u8>> {
        let (schema, batches) = self.batches_since(since_ms)?;
        let mut buf = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut buf, &schema)?;
            for b in &batches {
                w.write(b)?;
            }
            w.finish()?;
        }
        Ok(buf)
    }

    /// JSON array of row objects `{"timestamp": ms, "<series>": value|null, ...}`
    /// (`pandas.read_json(..., orient="records")` reads it directly).
    pub fn export_json(&self, since_ms: i64) -> Result<serde_json::Value> {
        let (_, batches) = self.batches_since(since_ms)?;
        batches_to_json(&batches)
    }
}

/// Convert batches (timestamp + Float64 columns) to JSON row objects.
pub fn batches_to_json(batches: &[RecordBatch]) -> Result<serde_json::Value> {
    let mut rows = Vec::new();
    for b in batches {
        let ts = timestamps(b)?;
        let schema = b.schema();
        let cols: Vec<(&str, &Float64Array)> = schema
            .fields()
            .iter()
            .zip(b.columns())
            .filter_map(|(f, c)| c.as_any().downcast_ref::<Float64Array>().map(|a| (f.name().as_str(), a)))
            .collect();
        for i in 0..b.num_rows() {
            let mut m = serde_json::Map::with_capacity(cols.len() + 1);
            m.insert(TIMESTAMP.into(), ts.value(i).into());
            for (name, a) in &cols {
                let v = if a.is_null(i) { serde_json::Value::Null } else { serde_json::json!(a.value(i)) };
                m.insert((*name).to_string(), v);
            }
            rows.push(serde_json::Value::Object(m));
        }
    }
    Ok(serde_json::Value::Array(rows))
}

/// Write batches (same schema) as an Arrow IPC *file*.
pub fn write_ipc_file(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let Some(first) = batches.first() else {
        return Err(AnomalyError::Data("write_ipc_file: no batches".into()));
    };
    let f = File::create(path).map_err(|e| AnomalyError::io(path, e))?;
    let mut w = FileWriter::try_new(BufWriter::new(f), &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(())
}

/// Read all batches of an Arrow IPC *file* (rotated history, training input).
pub fn read_ipc_file(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = File::open(path).map_err(|e| AnomalyError::io(path, e))?;
    let r = FileReader::try_new(BufReader::new(f), None)?;
    Ok(r.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Read all batches of Arrow IPC *stream* bytes (what [`SeriesStore::export_ipc_stream`] produced).
pub fn read_ipc_stream(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    let r = StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(r.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// Rotated IPC files in `dir`, oldest first (names embed zero-padded timestamps).
pub fn list_ipc_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| AnomalyError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == IPC_EXT)
                && !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    Ok(files)
}

fn enforce_size_cap(dir: &Path, max_bytes: u64, keep: &Path) -> Result<()> {
    let files = list_ipc_files(dir)?;
    let sizes: Vec<u64> = files.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).collect();
    let mut total: u64 = sizes.iter().sum();
    for (p, size) in files.iter().zip(sizes) {
        if total <= max_bytes {
            break;
        }
        if p == keep {
            continue; // never delete what we just wrote, even if it alone exceeds the cap
        }
        std::fs::remove_file(p).map_err(|e| AnomalyError::io(p, e))?;
        total -= size;
    }
    Ok(())
}

/// Column-oriented view of batches: what training and offline tooling work with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeriesTable {
    /// Unix ms per row.
    pub timestamps: Vec<i64>,
    /// Series name -> one value per row (`None` = missing).
    pub columns: BTreeMap<String, Vec<Option<f64>>>,
}

/// Concatenate batches (possibly with different column sets) into a [`SeriesTable`].
pub fn batches_to_table(batches: &[RecordBatch]) -> Result<SeriesTable> {
    let mut t = SeriesTable::default();
    for b in batches {
        let ts = timestamps(b)?;
        let offset = t.timestamps.len();
        t.timestamps.extend(ts.values().iter().copied());
        let schema = b.schema();
        for (f, c) in schema.fields().iter().zip(b.columns()) {
            if f.name() == TIMESTAMP {
                continue;
            }
            let a = arrow::compute::cast(c, &DataType::Float64)?;
            let a = a
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| AnomalyError::Data(format!("column {} is not numeric", f.name())))?;
            let col = t.columns.entry(f.name().clone()).or_insert_with(|| vec![None; offset]);
            col.resize(offset, None);
            col.extend((0..a.len()).map(|i| if a.is_null(i) { None } else { Some(a.value(i)) }));
        }
        for col in t.columns.values_mut() {
            col.resize(t.timestamps.len(), None);
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ring_trims_partial_batches() {
        let mut s = SeriesStore::new(StoreOptions { capacity: 10, batch_rows: 4, ..Default::default() }).unwrap();
        for i in 0..23 {
            s.push(&Tick::new(i).with("a", i as f64)).unwrap();
            assert!(s.len() <= 10);
        }
        assert_eq!(s.len(), 10);
        let (_, b) = s.batches_since(0).unwrap();
        let t = batches_to_table(&b).unwrap();
        assert_eq!(t.timestamps, (13..23).collect::<Vec<_>>());
    }
}
