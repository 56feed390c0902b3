//! Examples, end-to-end tests and benchmarks of VSP. This package is not published; what it
//! shares between them is the demo `user-service` below.

pub mod user_service {
    //! The demo `user-service` of the quick start: `get_user`, `create_user`, `update_user`
    //! over an in-memory store seeded with user `123`.

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use serde::{Deserialize, Serialize};
    use vsp::{VspError, VspManager};

    /// The service name.
    pub const SERVICE: &str = "user-service";

    /// A user record.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct User {
        pub id: String,
        pub name: String,
        pub email: String,
    }

    #[derive(Deserialize)]
    struct GetUser {
        user_id: String,
    }

    #[derive(Deserialize)]
    struct CreateUser {
        name: String,
        email: String,
    }

    #[derive(Deserialize)]
    struct UpdateUser {
        user_id: String,
        name: Option<String>,
        email: Option<String>,
    }

    /// The store behind the endpoints.
    #[derive(Debug)]
    pub struct Users {
        users: Mutex<HashMap<String, User>>,
        next_id: AtomicU64,
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
            }
        }
    }

    impl Users {
        fn get(&self, user_id: &str) -> Result<User, String> {
            let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users
                .get(user_id)
                .cloned()
                .ok_or_else(|| format!("user {user_id} not found"))
        }

        fn create(&self, name: String, email: String) -> User {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed).to_string();
            let user = User { id, name, email };
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            users.insert(user.id.clone(), user.clone());
            user
        }

        fn update(&self, args: UpdateUser) -> Result<User, String> {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            let user = users
                .get_mut(&args.user_id)
                .ok_or_else(|| format!("user {} not found", args.user_id))?;
            if let Some(name) = args.name {
                user.name = name;
            }
            if let Some(email) = args.email {
                user.email = email;
            }
            Ok(user.clone())
        }
    }

    /// Registers the three endpoints on `manager`.
    pub fn register(manager: &VspManager, users: Arc<Users>) -> Result<(), VspError> {
        let store = users.clone();
        manager.endpoint("get_user", move |args: GetUser| {
            let store = store.clone();
            async move { store.get(&args.user_id) }
        })?;
        let store = users.clone();
        manager.endpoint("create_user", move |args: CreateUser| {
            let store = store.clone();
            async move { Ok::<_, String>(store.create(args.name, args.email)) }
        })?;
        manager.endpoint("update_user", move |args: UpdateUser| {
            let store = users.clone();
            async move { store.update(args) }
        })?;
        Ok(())
    }
}
