//! A directory of shards for offline or private data: `.jsonl` (field `text`), `.txt` (one document per
//! line) and `.parquet` (column `text`). Each shard is one config named by its path under the root; blank
//! lines are not rows. Row counts are taken once and cached, since counting a large shard is a full read.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type as ParquetType;
use serde::Deserialize;
use tokio::sync::OnceCell;
use tracing::debug;

use super::PageSource;
use crate::error::DataError;
use crate::pages::{ConfigInfo, DatasetInfo, Page};

/// The split every local shard reports.
const LOCAL_SPLIT: &str = "train";

/// [`PageSource`] over the shards under one directory (searched recursively, in path order).
pub struct LocalFilesSource {
    root: PathBuf,
    shards: OnceCell<Arc<Vec<Shard>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jsonl,
    Txt,
    Parquet,
}

#[derive(Debug, Clone)]
struct Shard {
    name: String,
    path: PathBuf,
    kind: Kind,
    num_rows: u64,
}

#[derive(Deserialize)]
struct JsonlRow {
    text: String,
}

impl LocalFilesSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), shards: OnceCell::new() }
    }

    async fn shards(&self) -> Result<Arc<Vec<Shard>>, DataError> {
        self.shards
            .get_or_try_init(|| {
                let root = self.root.clone();
                async move { blocking(move || scan(&root)).await.map(Arc::new) }
            })
            .await
            .cloned()
    }
}

#[async_trait::async_trait]
impl PageSource for LocalFilesSource {
    async fn info(&self) -> Result<DatasetInfo, DataError> {
        let shards = self.shards().await?;
        let configs = shards
            .iter()
            .map(|s| ConfigInfo { name: s.name.clone(), split: LOCAL_SPLIT.to_owned(), num_rows: s.num_rows })
            .collect();
        Ok(DatasetInfo { configs })
    }

    async fn rows(&self, page: &Page) -> Result<Vec<String>, DataError> {
        let shards = self.shards().await?;
        let bad = |message: String| DataError::BadPage {
            config: page.config.clone(),
            split: page.split.clone(),
            offset: page.offset,
            rows: page.rows,
            message,
        };
        let shard = shards
            .iter()
            .find(|s| s.name == page.config && page.split == LOCAL_SPLIT)
            .ok_or_else(|| bad(format!("no such shard (split {LOCAL_SPLIT:?}) under {}", self.root.display())))?;
        let end = page.offset.checked_add(u64::from(page.rows)).filter(|&end| end <= shard.num_rows);
        if end.is_none() {
            return Err(bad(format!("shard has {} rows", shard.num_rows)));
        }
        let shard = shard.clone();
        let (offset, count) = (page.offset, page.rows as usize);
        blocking(move || match shard.kind {
            Kind::Jsonl | Kind::Txt => read_lines(&shard, offset, count),
            Kind::Parquet => read_parquet(&shard.path, offset, count),
        })
        .await
    }

    fn describe(&self) -> String {
        format!("local shards in {}", self.root.display())
    }
}

/// Runs file work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, DataError> + Send + 'static,
) -> Result<T, DataError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| DataError::Task(e.to_string()))?
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_owned(), source }
}

/// Finds and counts the shards under `root`.
fn scan(root: &Path) -> Result<Vec<Shard>, DataError> {
    if !root.is_dir() {
        return Err(DataError::NotFound { what: "data directory", path: root.to_owned() });
    }
    let mut files = Vec::new();
    collect_files(root, &mut files)?;
    files.sort();
    let mut shards = Vec::new();
    for path in files {
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("jsonl") => Kind::Jsonl,
            Some("txt") => Kind::Txt,
            Some("parquet") => Kind::Parquet,
            _ => continue,
        };
        let num_rows = match kind {
            Kind::Jsonl | Kind::Txt => count_lines(&path)?,
            Kind::Parquet => count_parquet(&path)?,
        };
        let name = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        debug!(shard = %name, num_rows, "found local shard");
        shards.push(Shard { name, path, kind, num_rows });
    }
    if shards.iter().all(|s| s.num_rows == 0) {
        return Err(DataError::EmptyDataset(format!(
            "{} (no non-empty .jsonl, .txt or .parquet files)",
            root.display()
        )));
    }
    Ok(shards)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Calls `f(line_number, line)` for each non-blank line (1-based numbers count blank lines too) until it
/// returns `false`.
fn for_each_line(path: &Path, mut f: impl FnMut(usize, &[u8]) -> Result<bool, DataError>) -> Result<(), DataError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io_err(path))? == 0 {
            return Ok(());
        }
        number += 1;
        let line = buf.trim_ascii();
        if !line.is_empty() && !f(number, line)? {
            return Ok(());
        }
    }
}

fn count_lines(path: &Path) -> Result<u64, DataError> {
    let mut n = 0;
    for_each_line(path, |_, _| {
        n += 1;
        Ok(true)
    })?;
    Ok(n)
}

fn read_lines(shard: &Shard, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
    let mut out = Vec::with_capacity(count);
    let mut index = 0u64;
    for_each_line(&shard.path, |number, line| {
        if index >= offset {
            out.push(match shard.kind {
                Kind::Jsonl => {
                    serde_json::from_slice::<JsonlRow>(line)
                        .map_err(|e| DataError::MalformedJson {
                            origin: format!("{}:{number}", shard.path.display()),
                            field: "text".to_owned(),
                            message: e.to_string(),
                        })?
                        .text
                }
                _ => String::from_utf8_lossy(line).into_owned(),
            });
        }
        index += 1;
        Ok(out.len() < count)
    })?;
    Ok(out)
}

fn open_parquet(path: &Path) -> Result<SerializedFileReader<File>, DataError> {
    let file = File::open(path).map_err(io_err(path))?;
    SerializedFileReader::new(file).map_err(|e| DataError::Parquet { path: path.to_owned(), message: e.to_string() })
}

/// The schema with only the top-level `text` column, which must hold byte arrays (strings).
fn text_projection(path: &Path, reader: &SerializedFileReader<File>) -> Result<ParquetType, DataError> {
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let text = fields.iter().find(|f| f.name() == "text").ok_or_else(|| {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        DataError::Parquet {
            path: path.to_owned(),
            message: format!("no `text` column (columns: {})", names.join(", ")),
        }
    })?;
    if !text.is_primitive() || text.get_physical_type() != parquet::basic::Type::BYTE_ARRAY {
        return Err(DataError::Parquet {
            path: path.to_owned(),
            message: "`text` column is not a string column".into(),
        });
    }
    ParquetType::group_type_builder(schema.name())
        .with_fields(vec![text.clone()])
        .build()
        .map_err(|e| DataError::Parquet { path: path.to_owned(), message: e.to_string() })
}

fn count_parquet(path: &Path) -> Result<u64, DataError> {
    let reader = open_parquet(path)?;
    text_projection(path, &reader)?;
    Ok(reader.metadata().file_metadata().num_rows().max(0) as u64)
}

/// Rows `offset..offset+count` of the `text` column, skipping whole row groups before `offset`.
fn read_parquet(path: &Path, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
    let perr = |e: parquet::errors::ParquetError| DataError::Parquet { path: path.to_owned(), message: e.to_string() };
    let reader = open_parquet(path)?;
    let projection = text_projection(path, &reader)?;
    let mut out = Vec::with_capacity(count);
    let mut group_start = 0u64;
    for (i, group) in reader.metadata().row_groups().iter().enumerate() {
        let group_rows = group.num_rows().max(0) as u64;
        let group_end = group_start + group_rows;
        if group_end <= offset {
            group_start = group_end;
            continue;
        }
        let skip = offset.saturating_sub(group_start) as usize;
        let group_reader = reader.get_row_group(i).map_err(perr)?;
        for row in group_reader.get_row_iter(Some(projection.clone())).map_err(perr)?.skip(skip) {
            if out.len() == count {
                break;
            }
            let row = row.map_err(perr)?;
            let text = match row.get_column_iter().next().map(|(_, field)| field) {
                Some(Field::Str(s)) => s.clone(),
                Some(Field::Bytes(b)) => String::from_utf8_lossy(b.data()).into_owned(),
                Some(Field::Null) | None => String::new(),
                Some(other) => {
                    return Err(DataError::Parquet {
                        path: path.to_owned(),
                        message: format!("`text` holds a non-string value {other}"),
                    });
                }
            };
            out.push(text);
        }
        if out.len() == count {
            break;
        }
        group_start = group_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;

    /// Writes `texts` as a parquet file with a `text` and an `id` column, in row groups of `group` rows.
    fn write_parquet(path: &Path, texts: &[String], group: usize) {
        let schema = Arc::new(
            parse_message_type("message doc { required int32 id; required binary text (UTF8); }").expect("schema"),
        );
        let file = File::create(path).expect("create parquet");
        let mut writer =
            SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).expect("writer");
        for (g, chunk) in texts.chunks(group).enumerate() {
            let mut rg = writer.next_row_group().expect("row group");
            let mut col = 0;
            while let Some(mut column) = rg.next_column().expect("column") {
                if col == 0 {
                    let ids: Vec<i32> = (0..chunk.len()).map(|i| (g * group + i) as i32).collect();
                    column.typed::<Int32Type>().write_batch(&ids, None, None).expect("ids");
                } else {
                    let values: Vec<ByteArray> = chunk.iter().map(|t| ByteArray::from(t.as_str())).collect();
                    column.typed::<ByteArrayType>().write_batch(&values, None, None).expect("texts");
                }
                column.close().expect("close column");
                col += 1;
            }
            rg.close().expect("close row group");
        }
        writer.close().expect("close parquet");
    }

    fn page(config: &str, offset: u64, rows: u32) -> Page {
        Page { config: config.into(), split: "train".into(), offset, rows }
    }

    #[tokio::test]
    async fn local_jsonl_txt_and_parquet_shards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(
            root.join("a.jsonl"),
            "{\"text\":\"alpha\",\"id\":1}\n\n{\"text\":\"beta\"}\n{\"text\":\"gamma\"}\n",
        )
        .expect("jsonl");
        std::fs::create_dir(root.join("sub")).expect("subdir");
        std::fs::write(root.join("sub/b.txt"), "line one\n   \nline two\nline three").expect("txt");
        std::fs::write(root.join("notes.md"), "ignored").expect("md");
        let texts: Vec<String> = (0..10).map(|i| format!("parquet row {i}")).collect();
        write_parquet(&root.join("c.parquet"), &texts, 4);

        let src = LocalFilesSource::new(root);
        let info = src.info().await.expect("info");
        let shape: Vec<(&str, u64)> = info.configs.iter().map(|c| (c.name.as_str(), c.num_rows)).collect();
        assert_eq!(shape, [("a.jsonl", 3), ("c.parquet", 10), ("sub/b.txt", 3)]);

        assert_eq!(src.rows(&page("a.jsonl", 1, 2)).await.expect("jsonl"), ["beta", "gamma"]);
        assert_eq!(src.rows(&page("sub/b.txt", 0, 3)).await.expect("txt"), ["line one", "line two", "line three"]);
        // Crosses the 4-row group boundaries: rows 3..9.
        let got = src.rows(&page("c.parquet", 3, 6)).await.expect("parquet");
        assert_eq!(got, texts[3..9]);
        assert_eq!(src.rows(&page("c.parquet", 8, 2)).await.expect("parquet tail"), texts[8..10]);

        let err = src.rows(&page("a.jsonl", 2, 2)).await.expect_err("past end");
        assert!(matches!(err, DataError::BadPage { .. }), "{err:?}");
        let err = src.rows(&page("missing.txt", 0, 1)).await.expect_err("unknown shard");
        assert!(err.to_string().contains("missing.txt"), "{err}");

        // Pages chosen over a local dataset are readable.
        for p in crate::pages::pages_for(1, 2, 6, &info) {
            assert_eq!(src.rows(&p).await.expect("page").len(), p.rows as usize);
        }
    }

    #[tokio::test]
    async fn local_malformed_jsonl_names_file_line_and_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("bad.jsonl"), "{\"text\":\"ok\"}\n{\"body\":\"no text\"}\n").expect("write");
        let src = LocalFilesSource::new(dir.path());
        let err = src.rows(&page("bad.jsonl", 0, 2)).await.expect_err("malformed");
        match &err {
            DataError::MalformedJson { origin, field, message } => {
                assert!(origin.ends_with("bad.jsonl:2"), "{origin}");
                assert_eq!(field, "text");
                assert!(message.contains("text"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn local_missing_dir_empty_dir_and_textless_parquet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = LocalFilesSource::new(&missing).info().await.expect_err("missing");
        assert!(matches!(&err, DataError::NotFound { path, .. } if *path == missing), "{err:?}");

        let err = LocalFilesSource::new(dir.path()).info().await.expect_err("empty");
        assert!(matches!(err, DataError::EmptyDataset(_)), "{err:?}");

        let schema = Arc::new(parse_message_type("message doc { required int32 id; }").expect("schema"));
        let file = File::create(dir.path().join("x.parquet")).expect("create");
        let writer = SerializedFileWriter::new(file, schema, Arc::new(WriterProperties::builder().build())).expect("w");
        writer.close().expect("close");
        let err = LocalFilesSource::new(dir.path()).info().await.expect_err("no text column");
        assert!(err.to_string().contains("no `text` column (columns: id)"), "{err}");
    }
}
