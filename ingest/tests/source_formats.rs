//! The reader stage on the awkward corners of URL lists: quoting, line breaks, unicode, empty and
//! long captions, short rows, blank lines, keep-cols of any type, SBU JSON, malformed input.
use albef_ingest::source::{count_rows, read_rows, InputRow, InputSpec};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
    let p = dir.join(name);
    if name.ends_with(".gz") {
        let mut enc = flate2::write::GzEncoder::new(
            std::fs::File::create(&p).unwrap(),
            flate2::Compression::fast(),
        );
        enc.write_all(body).unwrap();
        enc.finish().unwrap();
    } else {
        std::fs::write(&p, body).unwrap();
    }
    p
}

fn spec(p: &Path) -> InputSpec {
    InputSpec {
        input: p.display().to_string(),
        ..Default::default()
    }
}

fn rows(spec: &InputSpec) -> Vec<InputRow> {
    let got: Vec<InputRow> = read_rows(spec)
        .unwrap()
        .collect::<anyhow::Result<Vec<_>>>()
        .unwrap();
    assert_eq!(count_rows(spec).unwrap(), got.len() as u64);
    got
}

fn error(spec: &InputSpec) -> String {
    let err = match read_rows(spec) {
        Err(e) => e,
        Ok(mut it) => it.find_map(|r| r.err()).expect("an error"),
    };
    format!("{err:#}")
}

fn captions(got: &[InputRow]) -> Vec<Option<&str>> {
    got.iter().map(|r| r.caption.as_deref()).collect()
}

#[test]
fn csv_quoting_line_breaks_and_unicode() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(200_000);
    let body = format!(
        "caption,url,n\r\n\
         \"multi\nline, \"\"quoted\"\"\",http://h/1.jpg,1\r\n\
         \r\n\
         ,http://h/2.jpg,2\n\
         \"\",http://h/3.jpg,3\n\
         café 写真\tтаб,http://h/4.jpg,4\n\
         {long},http://h/5.jpg,5\n\
         \"cr\rinside\",http://h/6.jpg\n\
         \n\
         last,http://h/7.jpg,7,extra"
    );
    let p = write(dir.path(), "l.csv", body.as_bytes());
    let got = rows(&InputSpec {
        keep_cols: vec!["n".into()],
        ..spec(&p)
    });
    let urls: Vec<&str> = got.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(
        urls,
        (1..=7)
            .map(|i| format!("http://h/{i}.jpg"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        captions(&got),
        [
            Some("multi\nline, \"quoted\""),
            Some(""),
            Some(""),
            Some("café 写真\tтаб"),
            Some(long.as_str()),
            Some("cr\rinside"),
            Some("last"),
        ]
    );
    let n: Vec<Option<&str>> = got.iter().map(|r| r.extra[0].as_deref()).collect();
    assert_eq!(
        n,
        [
            Some("1"),
            Some("2"),
            Some("3"),
            Some("4"),
            Some("5"),
            None,
            Some("7")
        ]
    );

    // The same list gzip'd reads the same.
    let gz = write(dir.path(), "l.csv.gz", body.as_bytes());
    assert_eq!(
        rows(&InputSpec {
            keep_cols: vec!["n".into()],
            ..spec(&gz)
        }),
        got
    );
}

#[test]
fn tsv_takes_quotes_literally_and_pads_short_rows() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "l.tsv",
        b"\xEF\xBB\xBF url \t caption \n\
          http://h/1.jpg\t\"starts with a quote\n\
          http://h/2.jpg\t\n\
          http://h/3.jpg\n\
          \n\
          http://h/4.jpg\ta, b \"c\"\textra\r\n\
          http://h/5.jpg\t\xF0\x9F\x93\xB7 emoji\r\n",
    );
    let got = rows(&spec(&p));
    assert_eq!(got.len(), 5);
    assert_eq!(
        captions(&got),
        [
            Some("\"starts with a quote"),
            Some(""),
            None,
            Some("a, b \"c\""),
            Some("📷 emoji")
        ]
    );
    assert_eq!(got[4].url, "http://h/5.jpg");
}

#[test]
fn headerless_gzip_tsv_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let n = 120_003;
    let body: String = (0..n)
        .map(|i| format!("caption {i}\thttp://h/{i}.jpg\n"))
        .collect();
    let p = write(dir.path(), "cc3m.tsv.gz", body.as_bytes());
    let s = InputSpec {
        columns: Some(vec!["caption".into(), "url".into()]),
        ..spec(&p)
    };
    let got = rows(&s);
    assert_eq!(got.len(), n);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.url, format!("http://h/{i}.jpg"));
        assert_eq!(r.caption.as_deref(), Some(format!("caption {i}").as_str()));
    }
}

#[test]
fn jsonl_values_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "l.jsonl",
        b"{\"url\": \"http://h/1.jpg\", \"caption\": \"one\", \"w\": 640, \"ok\": true, \"tags\": [\"a\", \"b\"]}\n\
          \n   \n\
          {\"url\": \"http://h/2.jpg\", \"caption\": null, \"w\": null, \"ok\": false, \"tags\": null}\n\
          {\"url\": \"http://h/3.jpg\", \"w\": \"wide\", \"ok\": false, \"tags\": {\"k\": 1}}\n",
    );
    let got = rows(&InputSpec {
        keep_cols: vec!["w".into(), "ok".into()],
        ..spec(&p)
    });
    assert_eq!(captions(&got), [Some("one"), None, None]);
    let extra: Vec<Vec<Option<&str>>> = got
        .iter()
        .map(|r| r.extra.iter().map(|e| e.as_deref()).collect())
        .collect();
    assert_eq!(
        extra,
        [
            vec![Some("640"), Some("true")],
            vec![None, Some("false")],
            vec![Some("wide"), Some("false")]
        ]
    );
}

#[test]
fn sbu_json_object_of_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "sbu.json",
        br#"{"image_urls": ["http://h/1.jpg", "http://h/2.jpg", "http://h/3.jpg"], "captions": ["one", "two"]}"#,
    );
    let got = rows(&spec(&p));
    assert_eq!(got.len(), 3);
    assert_eq!(got[2].url, "http://h/3.jpg");
    assert_eq!(captions(&got), [Some("one"), Some("two"), None]);

    let p = write(dir.path(), "empty.json", b"[]");
    assert!(rows(&spec(&p)).is_empty());
}

#[test]
fn parquet_columns_of_any_type_as_text() {
    use arrow_array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("laion.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("URL", DataType::Utf8, true),
        Field::new("TEXT", DataType::Utf8, true),
        Field::new("similarity", DataType::Float64, true),
        Field::new("WIDTH", DataType::Int64, true),
        Field::new("nsfw", DataType::Boolean, true),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(2))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&p).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(
                (0..5).map(|i| format!("http://h/{i}.jpg")),
            )),
            Arc::new(StringArray::from(vec![
                Some("a"),
                None,
                Some(""),
                Some("d"),
                Some("é"),
            ])),
            Arc::new(Float64Array::from(vec![
                Some(0.25),
                Some(1.0),
                None,
                Some(0.3),
                Some(1e-7),
            ])),
            Arc::new(Int64Array::from(vec![
                Some(640),
                None,
                Some(1),
                Some(2),
                Some(-3),
            ])),
            Arc::new(BooleanArray::from(vec![
                Some(true),
                Some(false),
                None,
                Some(true),
                Some(false),
            ])),
        ],
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let got = rows(&InputSpec {
        keep_cols: vec!["similarity".into(), "WIDTH".into(), "nsfw".into()],
        ..spec(&p)
    });
    assert_eq!(got.len(), 5);
    assert_eq!(got[4].url, "http://h/4.jpg");
    assert_eq!(
        captions(&got),
        [Some("a"), None, Some(""), Some("d"), Some("é")]
    );
    let extra: Vec<Vec<Option<&str>>> = got
        .iter()
        .map(|r| r.extra.iter().map(|e| e.as_deref()).collect())
        .collect();
    assert_eq!(
        extra,
        [
            vec![Some("0.25"), Some("640"), Some("true")],
            vec![Some("1"), None, Some("false")],
            vec![None, Some("1"), None],
            vec![Some("0.3"), Some("2"), Some("true")],
            vec![Some("0.0000001"), Some("-3"), Some("false")],
        ]
    );
}

#[test]
fn malformed_input_names_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let p = write(
        d,
        "bad.jsonl",
        b"{\"url\": \"http://h/1.jpg\"}\n{\"url\": \n",
    );
    let err = error(&spec(&p));
    assert!(err.contains("bad.jsonl line 2"), "{err}");

    let p = write(
        d,
        "utf8.csv",
        b"url,caption\nhttp://h/1.jpg,ok\nhttp://h/2.jpg,\xFF\xFE\n",
    );
    let err = error(&spec(&p));
    assert!(err.contains("utf8.csv"), "{err}");

    let p = write(d, "nourl.tsv", b"link\talt\nhttp://h/1.jpg\ta\n");
    let err = error(&spec(&p));
    assert!(
        err.contains("nourl.tsv") && err.contains("no URL column"),
        "{err}"
    );

    let p = write(d, "keep.csv", b"url,caption\nhttp://h/1.jpg,a\n");
    let err = error(&InputSpec {
        keep_cols: vec!["width".into()],
        ..spec(&p)
    });
    assert!(
        err.contains("keep.csv") && err.contains("\"width\""),
        "{err}"
    );

    let p = write(d, "not.parquet", b"url,caption\n");
    let err = error(&spec(&p));
    assert!(err.contains("not.parquet"), "{err}");

    let p = write(d, "broken.csv.gz", b"url,caption\nhttp://h/1.jpg,a\n");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let err = error(&spec(&p));
    assert!(err.contains("broken.csv.gz"), "{err}");
}
