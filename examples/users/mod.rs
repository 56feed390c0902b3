//! The demo `user-service` of the examples: `get_user`, `create_user`, `update_user` over an
//! in-memory store seeded with user `123`. Copy it next to an example's `main.rs` as
//! `users/mod.rs` (or `users.rs`); it needs `vsp-rpc` (feature `schema`, for the JSON Schemas
//! of its `vsp.describe`), serde's `derive` and `schemars`.
#![allow(dead_code)] // each example uses its own part

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use vsp::Streaming;

/// A user record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub email: String,
}

/// Why a user operation failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub enum UserError {
    /// No user has this id.
    NotFound { user_id: String },
}

/// The text callers see (`CallError`'s `Display`, and the `error` text Velithon's clients read).
impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::NotFound { user_id } => write!(f, "no user with id {user_id}"),
        }
    }
}

/// The status the HTTP gateway answers with (without it, a typed error is `422`).
impl vsp::HttpStatus for UserError {
    fn http_status(&self) -> u16 {
        match self {
            UserError::NotFound { .. } => 404,
        }
    }
}

/// The users of the system.
#[vsp::service(name = "user-service")]
pub trait UserService {
    /// The user with this id.
    #[vsp(idempotent)]
    async fn get_user(&self, user_id: String) -> Result<User, UserError>;
    /// Creates a user and returns it with its new id.
    async fn create_user(&self, name: String, email: String) -> User;
    /// Changes the fields given; the others keep their values.
    async fn update_user(
        &self,
        user_id: String,
        name: Option<String>,
        email: Option<String>,
    ) -> Result<User, UserError>;
    /// The users created from now on, as they are created.
    async fn watch_users(&self) -> Streaming<User>;
}

/// An in-memory implementation.
#[derive(Debug)]
pub struct Users {
    users: Mutex<HashMap<String, User>>,
    next_id: AtomicU64,
    /// Every user created, for `watch_users`.
    created: broadcast::Sender<User>,
}

impl Default for Users {
    fn default() -> Self {
        let seed = User {
            id: "123".into(),
            name: "John Doe".into(),
            email: "john@example.com".into(),
        };
        Users {
            users: Mutex::new(HashMap::from([(seed.id.clone(), seed)])),
            next_id: AtomicU64::new(1000),
            created: broadcast::channel(64).0,
        }
    }
}

impl UserService for Users {
    async fn get_user(&self, user_id: String) -> Result<User, UserError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .get(&user_id)
            .cloned()
            .ok_or(UserError::NotFound { user_id })
    }

    async fn create_user(&self, name: String, email: String) -> User {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        let user = User { id, name, email };
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.insert(user.id.clone(), user.clone());
        drop(users);
        // Nobody watching is fine.
        let _ = self.created.send(user.clone());
        user
    }

    async fn update_user(
        &self,
        user_id: String,
        name: Option<String>,
        email: Option<String>,
    ) -> Result<User, UserError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let Some(user) = users.get_mut(&user_id) else {
            return Err(UserError::NotFound { user_id });
        };
        if let Some(name) = name {
            user.name = name;
        }
        if let Some(email) = email {
            user.email = email;
        }
        Ok(user.clone())
    }

    async fn watch_users(&self) -> Streaming<User> {
        Streaming::unfold(self.created.subscribe(), |mut created| async move {
            loop {
                match created.recv().await {
                    Ok(user) => return Some((user, created)),
                    // A watcher that fell more than 64 users behind skips the ones it missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}
