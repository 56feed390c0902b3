//! `#[vsp::service]` methods that take a stream: the generated client takes any `Stream` of the
//! items beside the other arguments, typed errors travel (a client stream's after items were
//! read), and the description shows the stream parameter and its item's schema.

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use vsp::{CallError, Streaming};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub name: String,
    pub chunks: u32,
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UploadError {
    Empty { name: String },
}

impl std::fmt::Display for UploadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UploadError::Empty { name } => write!(f, "`{name}` has no bytes"),
        }
    }
}

/// Files, sent in chunks.
#[vsp::service(name = "files")]
pub trait Files {
    /// Stores the chunks of file `name`; an empty file is refused.
    async fn upload(&self, name: String, chunks: Streaming<Chunk>) -> Result<Summary, UploadError>;
    /// How many numbers came.
    async fn count(&self, numbers: Streaming<u32>) -> u64;
    /// Each line back, prefixed.
    async fn echo(&self, prefix: String, lines: Streaming<String>) -> Streaming<String>;
    /// Each line back, unless the prefix is empty.
    async fn checked_echo(
        &self,
        lines: Streaming<String>,
        prefix: String,
    ) -> Result<Streaming<String>, UploadError>;
}

struct Store;

impl Files for Store {
    async fn upload(&self, name: String, chunks: Streaming<Chunk>) -> Result<Summary, UploadError> {
        let (chunks, bytes) = chunks
            .fold((0u32, 0u64), |(n, bytes), chunk| async move {
                (n + 1, bytes + chunk.bytes.len() as u64)
            })
            .await;
        if bytes == 0 {
            return Err(UploadError::Empty { name });
        }
        Ok(Summary {
            name,
            chunks,
            bytes,
        })
    }

    async fn count(&self, numbers: Streaming<u32>) -> u64 {
        numbers.count().await as u64
    }

    async fn echo(&self, prefix: String, lines: Streaming<String>) -> Streaming<String> {
        Streaming::new(lines.map(move |line| format!("{prefix}{line}")))
    }

    async fn checked_echo(
        &self,
        lines: Streaming<String>,
        prefix: String,
    ) -> Result<Streaming<String>, UploadError> {
        if prefix.is_empty() {
            return Err(UploadError::Empty {
                name: "prefix".to_owned(),
            });
        }
        Ok(Streaming::new(
            lines.map(move |line| format!("{prefix}{line}")),
        ))
    }
}

fn chunks(sizes: &[usize]) -> impl futures::Stream<Item = Chunk> + Send + 'static {
    let chunks: Vec<Chunk> = sizes
        .iter()
        .map(|&size| Chunk {
            bytes: vec![7; size],
        })
        .collect();
    futures::stream::iter(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_sends_any_stream_and_gets_typed_answers_and_errors() {
    let files = FilesClient::local(Store).await.unwrap();

    let summary = files
        .upload("a.txt".to_owned(), chunks(&[100, 200, 300]))
        .await
        .unwrap();
    assert_eq!(
        summary,
        Summary {
            name: "a.txt".to_owned(),
            chunks: 3,
            bytes: 600
        }
    );
    // A typed error decided after every item was read.
    match files.upload("empty.txt".to_owned(), chunks(&[0, 0])).await {
        Err(CallError::Service(UploadError::Empty { name })) => assert_eq!(name, "empty.txt"),
        other => panic!("expected the typed error, got {other:?}"),
    }
    // Any stream: a channel's receiver.
    let (sender, receiver) = tokio::sync::mpsc::channel::<u32>(8);
    tokio::spawn(async move {
        for n in 0..500 {
            sender.send(n).await.unwrap();
        }
    });
    let numbers = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|n| (n, receiver))
    });
    assert_eq!(files.count(numbers).await.unwrap(), 500);

    let lines = futures::stream::iter(vec!["a".to_owned(), "b".to_owned()]);
    let echoed: Vec<String> = files
        .echo("> ".to_owned(), lines)
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(echoed, vec!["> a", "> b"]);

    let lines = futures::stream::iter(vec!["c".to_owned()]);
    let echoed: Vec<String> = files
        .checked_echo(lines, "# ".to_owned())
        .await
        .unwrap()
        .map(Result::unwrap)
        .collect()
        .await;
    assert_eq!(echoed, vec!["# c"]);
    // The bidirectional call is open before its handler runs: its error is the last item.
    let lines = futures::stream::iter(vec!["d".to_owned()]);
    let mut refused = files.checked_echo(lines, String::new()).await.unwrap();
    let err = refused.next().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("`prefix` has no bytes"), "{err}");
    assert!(refused.next().await.is_none());
}

#[tokio::test]
async fn the_description_names_the_stream_parameter_and_its_items() {
    let manager = vsp::VspManager::builder("files").build();
    manager.serve(FilesServer::new(Store)).unwrap();
    let description = manager.description();
    let upload = description
        .endpoints
        .iter()
        .find(|endpoint| endpoint.name == "upload")
        .unwrap();
    assert!(!upload.streaming, "a client stream answers once");
    assert_eq!(upload.params, vec!["name"]);
    let input = upload
        .input_stream
        .as_ref()
        .expect("no input stream described");
    assert_eq!(input.param, "chunks");
    let echo = description
        .endpoints
        .iter()
        .find(|endpoint| endpoint.name == "echo")
        .unwrap();
    assert!(echo.streaming && echo.input_stream.is_some());
    assert_eq!(echo.params, vec!["prefix"]);
    let json = serde_json::to_value(upload).unwrap();
    assert!(
        json["args_schema"]["properties"].get("chunks").is_none(),
        "the stream is not an argument of the request object: {json}"
    );
}
