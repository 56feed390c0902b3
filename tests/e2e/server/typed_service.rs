//! `#[vsp::service]` and `#[vsp::call]` end to end over TCP: generated server, generated client,
//! typed application errors, and the same wire as dynamic calls.

use serde::{Deserialize, Serialize};
use serde_json::json;
use vsp::{CallError, ErrorCode, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: u64,
    pub owner: String,
    pub balance: i64,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum BankError {
    NoSuchAccount { id: u64 },
    Insufficient { needed: i64, available: i64 },
}

/// A tiny bank.
#[vsp::service(name = "bank")]
pub trait Bank {
    /// Opens an account.
    async fn open(&self, owner: String, deposit: i64) -> Account;
    /// Moves money between accounts.
    async fn transfer(&self, from: u64, to: u64, amount: i64) -> Result<(), BankError>;
    #[vsp(name = "balance-of", idempotent)]
    async fn balance(&self, id: u64) -> Result<i64, BankError>;
    async fn reset(&self);
    async fn optional_note(&self, note: Option<String>) -> Option<String>;
}

#[derive(Default)]
struct Ledger {
    accounts: std::sync::Mutex<Vec<Account>>,
}

impl Bank for Ledger {
    async fn open(&self, owner: String, deposit: i64) -> Account {
        let mut accounts = self.accounts.lock().unwrap();
        let account = Account {
            id: accounts.len() as u64,
            owner,
            balance: deposit,
        };
        accounts.push(account.clone());
        account
    }

    async fn transfer(&self, from: u64, to: u64, amount: i64) -> Result<(), BankError> {
        // Yield once so the futures really are polled across awaits on a multi-thread runtime.
        tokio::task::yield_now().await;
        let mut accounts = self.accounts.lock().unwrap();
        let len = accounts.len() as u64;
        for id in [from, to] {
            if id >= len {
                return Err(BankError::NoSuchAccount { id });
            }
        }
        let available = accounts[from as usize].balance;
        if available < amount {
            return Err(BankError::Insufficient {
                needed: amount,
                available,
            });
        }
        accounts[from as usize].balance -= amount;
        accounts[to as usize].balance += amount;
        Ok(())
    }

    async fn balance(&self, id: u64) -> Result<i64, BankError> {
        let accounts = self.accounts.lock().unwrap();
        accounts
            .get(id as usize)
            .map(|a| a.balance)
            .ok_or(BankError::NoSuchAccount { id })
    }

    async fn reset(&self) {
        self.accounts.lock().unwrap().clear();
    }

    async fn optional_note(&self, note: Option<String>) -> Option<String> {
        note.map(|n| n.to_uppercase())
    }
}

async fn start_bank() -> (VspManager, VspClient) {
    let manager = VspManager::builder(BankClient::SERVICE_NAME).build();
    manager.serve(BankServer::new(Ledger::default())).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("bank", "127.0.0.1", addr.port()))
        .unwrap();
    (manager, VspClient::builder(mesh).build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_client_calls_generated_server() {
    let (_manager, client) = start_bank().await;
    let bank = BankClient::new(client);
    let alice = bank.open("alice".into(), 100).await.unwrap();
    let bob = bank.open("bob".into(), 5).await.unwrap();
    assert_eq!(
        alice,
        Account {
            id: 0,
            owner: "alice".into(),
            balance: 100
        }
    );
    bank.transfer(alice.id, bob.id, 30).await.unwrap();
    assert_eq!(bank.balance(bob.id).await.unwrap(), 35);
    bank.reset().await.unwrap();
    assert_eq!(
        bank.optional_note(Some("hi".into())).await.unwrap(),
        Some("HI".into())
    );
    assert_eq!(bank.optional_note(None).await.unwrap(), None);
}

#[tokio::test]
async fn an_application_error_arrives_typed() {
    let (_manager, client) = start_bank().await;
    let bank = BankClient::new(client);
    bank.open("carol".into(), 10).await.unwrap();
    match bank.transfer(0, 0, 50).await {
        Err(CallError::Service(err)) => {
            assert_eq!(
                err,
                BankError::Insufficient {
                    needed: 50,
                    available: 10
                }
            )
        }
        other => panic!("expected the service's error, got {other:?}"),
    }
    match bank.balance(9).await {
        Err(CallError::Service(BankError::NoSuchAccount { id: 9 })) => {}
        other => panic!("expected NoSuchAccount, got {other:?}"),
    }
}

#[tokio::test]
async fn transport_failures_are_not_service_errors() {
    let mesh = ServiceMesh::new();
    let bank = BankClient::new(VspClient::builder(mesh).build());
    match bank.balance(0).await {
        Err(CallError::Vsp(VspError::NoInstances { service })) => assert_eq!(service, "bank"),
        other => panic!("expected NoInstances, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dynamic_call_reaches_a_generated_endpoint_with_plain_kwargs() {
    let (_manager, client) = start_bank().await;
    let account = client
        .call("bank", "open", json!({"owner": "dave", "deposit": 7}))
        .await
        .unwrap();
    assert_eq!(account, json!({"id": 0, "owner": "dave", "balance": 7}));
    // The renamed endpoint answers under its wire name only.
    assert_eq!(
        client
            .call("bank", "balance-of", json!({"id": 0}))
            .await
            .unwrap(),
        json!(7)
    );
    let err = client
        .call("bank", "balance", json!({"id": 0}))
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(&ErrorCode::NotFound));
    // An application error reads as text to dynamic (and Python) callers.
    match client.call("bank", "balance-of", json!({"id": 4})).await {
        Err(VspError::Remote {
            code: ErrorCode::Handler,
            message,
            ..
        }) => {
            assert_eq!(message, r#"{"NoSuchAccount":{"id":4}}"#)
        }
        other => panic!("expected a handler error, got {other:?}"),
    }
    // An `Option` argument left out is `None`, as a Python caller may send it.
    assert_eq!(
        client
            .call("bank", "optional_note", json!({}))
            .await
            .unwrap(),
        json!(null)
    );
}

#[tokio::test]
async fn a_generated_endpoint_names_a_missing_argument() {
    let (_manager, client) = start_bank().await;
    match client
        .call("bank", "transfer", json!({"from": 0, "amount": 1}))
        .await
    {
        Err(VspError::Remote {
            code: ErrorCode::BadRequest,
            message,
            ..
        }) => {
            assert!(message.contains("`to`"), "{message}")
        }
        other => panic!("expected bad_request, got {other:?}"),
    }
}

#[tokio::test]
async fn the_client_lists_the_service_and_its_endpoints() {
    assert_eq!(BankClient::SERVICE_NAME, "bank");
    assert_eq!(BankClient::BALANCE, "balance-of");
    assert_eq!(BankClient::TRANSFER, "transfer");
    let balance = BankClient::ENDPOINTS
        .iter()
        .find(|e| e.method == "balance")
        .unwrap();
    assert_eq!((balance.name, balance.idempotent), ("balance-of", true));
    assert!(
        !BankClient::ENDPOINTS
            .iter()
            .find(|e| e.name == "open")
            .unwrap()
            .idempotent
    );
    assert_eq!(BankClient::ENDPOINTS.len(), 5);
}

#[tokio::test]
async fn serving_a_service_twice_registers_nothing_twice() {
    let manager = VspManager::builder("bank").build();
    manager.serve(BankServer::new(Ledger::default())).unwrap();
    let err = manager
        .serve(BankServer::new(Ledger::default()))
        .unwrap_err();
    assert!(matches!(err, VspError::DuplicateEndpoint { .. }), "{err:?}");
    assert_eq!(
        manager.endpoints(),
        ["balance-of", "open", "optional_note", "reset", "transfer"]
    );
}

#[vsp::call(Bank::balance)]
async fn balance_of(client: &VspClient, id: u64) -> Result<i64, CallError<BankError>>;

#[vsp::call(Bank::open)]
async fn open_account(
    client: &BankClient,
    owner: String,
    deposit: i64,
) -> Result<Account, VspError>;

#[tokio::test]
async fn call_functions_go_through_the_generated_client() {
    let (_manager, client) = start_bank().await;
    let bank = BankClient::new(client.clone());
    let account = open_account(&bank, "erin".into(), 12).await.unwrap();
    assert_eq!(balance_of(&client, account.id).await.unwrap(), 12);
    assert!(matches!(
        balance_of(&client, 99).await,
        Err(CallError::Service(BankError::NoSuchAccount { id: 99 }))
    ));
}

/// Parameters may take any name, `service` and `manager` included.
#[vsp::service(name = "directory")]
trait Directory {
    async fn describe(&self, service: String, manager: String) -> String;
}

struct Phonebook;

impl Directory for Phonebook {
    async fn describe(&self, service: String, manager: String) -> String {
        format!("{service} is run by {manager}")
    }
}

#[tokio::test]
async fn a_parameter_named_service_does_not_shadow_the_generated_code() {
    let manager = VspManager::builder("directory").build();
    manager.serve(DirectoryServer::new(Phonebook)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = vsp::ServiceMesh::new();
    mesh.register(vsp::ServiceInfo::new("directory", "127.0.0.1", addr.port()))
        .unwrap();
    let client = DirectoryClient::new(VspClient::builder(mesh).build());
    let text = client
        .describe("billing".into(), "ops".into())
        .await
        .unwrap();
    assert_eq!(text, "billing is run by ops");
    manager.shutdown().await.unwrap();
}

/// An error type with a `Display`: its text on the wire is that, not its JSON.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub enum QuotaError {
    Exceeded { limit: u32 },
}

impl std::fmt::Display for QuotaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaError::Exceeded { limit } => write!(f, "quota of {limit} calls exceeded"),
        }
    }
}

#[vsp::service(name = "quota")]
pub trait Quota {
    async fn take(&self) -> Result<u32, QuotaError>;
}

struct Exhausted;

impl Quota for Exhausted {
    async fn take(&self) -> Result<u32, QuotaError> {
        Err(QuotaError::Exceeded { limit: 3 })
    }
}

#[tokio::test]
async fn a_typed_error_travels_as_its_display_text_and_as_data() {
    let manager = VspManager::builder("quota").build();
    manager.serve(QuotaServer::new(Exhausted)).unwrap();
    let addr = manager.start_server("127.0.0.1", 0).await.unwrap();
    let mesh = ServiceMesh::new();
    mesh.register(ServiceInfo::new("quota", "127.0.0.1", addr.port()))
        .unwrap();
    let client = VspClient::builder(mesh).build();
    // What a dynamic (or Velithon) caller reads: the Display text.
    match client.call("quota", "take", json!({})).await {
        Err(VspError::Remote { message, .. }) => assert_eq!(message, "quota of 3 calls exceeded"),
        other => panic!("expected the service's error, got {other:?}"),
    }
    // The typed client still gets the value itself.
    let typed = QuotaClient::new(client.clone());
    let err = typed.take().await.unwrap_err();
    assert!(
        matches!(&err, CallError::Service(QuotaError::Exceeded { limit: 3 })),
        "{err:?}"
    );
    // CallError displays the service's error by its own Display.
    assert_eq!(err.to_string(), "quota of 3 calls exceeded");
    let boxed: Box<dyn std::error::Error> = Box::new(err);
    assert_eq!(boxed.to_string(), "quota of 3 calls exceeded");
    // And a type without Display travels as its JSON text, as before.
    let (bank, bank_client) = start_bank().await;
    match bank_client
        .call("bank", "balance-of", json!({"id": 999}))
        .await
    {
        Err(VspError::Remote { message, .. }) => {
            assert_eq!(message, r#"{"NoSuchAccount":{"id":999}}"#)
        }
        other => panic!("expected the bank's error, got {other:?}"),
    }
    bank.shutdown().await.unwrap();
    manager.shutdown().await.unwrap();
}
