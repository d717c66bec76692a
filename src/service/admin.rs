//! The operator's use cases (`palaver user …`, `token`, `backup`): accounts created without
//! the registration route's limits, listed, given a new password, disabled and enabled; tokens
//! issued for scripts; backups. The same validation and argon2id hashing as registration. Ending
//! a user's sessions is the caller's (`transport::revoke_sessions` when a server runs, or
//! [`App::revoke_tokens`] alone when none does).

use std::path::PathBuf;
use std::time::Duration;

use super::auth;
use super::{ApiError, App, storage_failed};
use crate::domain::validate;
use crate::storage::backup::{BackupError, BackupSummary};
use crate::storage::writer::{AccountChange, CreateUserOutcome};
use crate::storage::{NewUser, Standing, StoreError, UserRecord};

fn unavailable(error: StoreError) -> ApiError {
    storage_failed(ApiError::Unavailable)(error)
}

const USER_NOT_FOUND: ApiError = ApiError::NotFound("User not found");

impl App {
    /// Whether `POST /api/auth/register` creates accounts.
    pub fn registration_open(&self) -> bool {
        self.policy.registration_open
    }

    /// Creates an account with a password, whether registration is open or not.
    pub async fn add_user(
        &self,
        name: &str,
        email: &str,
        password: &str,
    ) -> Result<UserRecord, ApiError> {
        let name = validate::name(name)?;
        let email = validate::email(email)?;
        validate::password(password)?;
        let hash = self.hash_new_password(password).await?;
        let new = NewUser {
            id: self.mint_id(),
            name,
            email,
            avatar: String::new(),
            password_hash: Some(hash),
            external_id: None,
            now_ms: self.now_ms(),
        };
        match self.writer.create_user(new).await.map_err(unavailable)? {
            CreateUserOutcome::Created(user) => Ok(user),
            CreateUserOutcome::EmailTaken | CreateUserOutcome::ExistingExternal(_) => {
                Err(ApiError::EmailTaken)
            }
        }
    }

    /// The account of `email` (compared like at login: trimmed, case-insensitive).
    pub fn user_by_email(&self, email: &str) -> Result<(UserRecord, Standing), ApiError> {
        let key = email.trim().to_lowercase();
        let id = self
            .store
            .user_id_by_email(&key)
            .map_err(unavailable)?
            .ok_or(USER_NOT_FOUND)?;
        let user = self
            .store
            .user(&id)
            .map_err(unavailable)?
            .ok_or(USER_NOT_FOUND)?;
        let standing = self.store.standing(&id).map_err(unavailable)?;
        Ok((user, standing))
    }

    /// Up to `limit` accounts after id `after`, in id (creation) order.
    pub fn users_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(UserRecord, Standing)>, ApiError> {
        self.store.users_page(after, limit).map_err(unavailable)
    }

    /// Sets the password of an account that is not the external provider's (whose users sign
    /// in there); an account imported without its hash gets its first one this way.
    pub async fn set_password(&self, user: &UserRecord, password: &str) -> Result<(), ApiError> {
        if user.external_id.is_some() {
            return Err(ApiError::BadRequest(
                "this user signs in through the external identity provider and has no password here".into(),
            ));
        }
        validate::password(password)?;
        let hash = self.hash_new_password(password).await?;
        let change = AccountChange::SetPassword {
            user: user.id.clone(),
            password_hash: hash,
            now_ms: self.now_ms(),
        };
        self.change_account(change).await
    }

    /// Marks the account disabled or enabled, durably. Disabling alone refuses the user's logins
    /// and every token at once (`authenticate` reads it); the caller closes their sockets.
    pub async fn set_disabled(&self, user: &str, disabled: bool) -> Result<(), ApiError> {
        let change = AccountChange::SetDisabled {
            user: user.to_owned(),
            disabled,
            now_ms: self.now_ms(),
        };
        self.change_account(change).await
    }

    /// A token for `user` living `ttl` (the configured lifetime when `None`), as a login would
    /// issue; refused for a disabled account.
    pub fn token_for(
        &self,
        user: &UserRecord,
        standing: &Standing,
        ttl: Option<Duration>,
    ) -> Result<(String, u64), ApiError> {
        if standing.disabled_ms.is_some() {
            return Err(ApiError::AccountDisabled);
        }
        let now = self.now_ms();
        let ttl = ttl.unwrap_or_else(|| self.tokens.ttl());
        let token = self
            .tokens
            .issue_for(&user.id, standing.generation, now, ttl);
        let expires_ms = (now / 1000 + ttl.as_secs()).saturating_mul(1000);
        Ok((token, expires_ms))
    }

    /// A consistent copy of the database at `target` (`palaver backup`), written off the async
    /// workers.
    pub async fn backup_to(&self, target: PathBuf) -> Result<BackupSummary, BackupError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.backup_to(&target))
            .await
            .expect("a backup does not panic")
    }

    async fn hash_new_password(&self, password: &str) -> Result<String, ApiError> {
        let salt: [u8; 16] = self.ids.lock().expect("never poisoned").bytes();
        let password = password.to_owned();
        self.cpu(move || auth::hash_password(&password, &salt))
            .await
    }

    async fn change_account(&self, change: AccountChange) -> Result<(), ApiError> {
        self.writer
            .change_account(change)
            .await
            .map_err(unavailable)?
            .map(drop)
            .ok_or(USER_NOT_FOUND)
    }
}
