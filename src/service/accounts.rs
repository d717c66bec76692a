//! Accounts: registration, login, tokens to users, the external provider's first login, and
//! the user search.

use std::net::IpAddr;

use super::auth::{self, ExternalClaims, Identity};
use super::views::{PublicUser, UserView};
use super::{ApiError, App, AuthFailure, Refusal, storage_failed};
use crate::domain::ids::is_valid_id;
use crate::domain::page::clamp_limit;
use crate::domain::validate;
use crate::limits::*;
use crate::storage::writer::CreateUserOutcome;
use crate::storage::{NewUser, StoreError, UserRecord};

fn unavailable(error: StoreError) -> ApiError {
    storage_failed(ApiError::Unavailable)(error)
}

impl App {
    /// Registers a user; `client` is the client's address (at most
    /// `Policy::registrations_per_address` registrations per address and window).
    pub async fn register(
        &self,
        client: IpAddr,
        name: &str,
        email: &str,
        password: &str,
    ) -> Result<(String, UserView), ApiError> {
        if !self.policy.registration_open {
            return Err(ApiError::RegistrationClosed);
        }
        let name = validate::name(name)?;
        let email = validate::email(email)?;
        validate::password(password)?;
        if self
            .store
            .user_id_by_email(&email)
            .map_err(unavailable)?
            .is_some()
        {
            return Err(ApiError::EmailTaken);
        }
        // Counted before hashing, so a flood of registrations costs no argon2 time either.
        if !self
            .registrations
            .lock()
            .expect("never poisoned")
            .try_record(client, self.now_ms())
        {
            return Err(ApiError::TooManyRegistrations);
        }
        let salt: [u8; 16] = self.ids.lock().expect("never poisoned").bytes();
        let password = password.to_owned();
        let hash = self
            .cpu(move || auth::hash_password(&password, &salt))
            .await?;
        let now = self.now_ms();
        let new = NewUser {
            id: self.mint_id(),
            name,
            email,
            avatar: String::new(),
            password_hash: Some(hash),
            external_id: None,
            now_ms: now,
        };
        match self.writer.create_user(new).await.map_err(unavailable)? {
            CreateUserOutcome::Created(user) => {
                Ok((self.tokens.issue(&user.id, now), UserView::from(&user)))
            }
            CreateUserOutcome::EmailTaken | CreateUserOutcome::ExistingExternal(_) => {
                Err(ApiError::EmailTaken)
            }
        }
    }

    /// Logs in; failures are counted per (`client` address, account) and per `client` address,
    /// so an attacker elsewhere cannot lock the user out.
    pub async fn login(
        &self,
        client: IpAddr,
        email: &str,
        password: &str,
    ) -> Result<(String, UserView), ApiError> {
        let key = email.trim().to_lowercase();
        let now = self.now_ms();
        if self
            .login_throttle
            .lock()
            .expect("never poisoned")
            .is_blocked(client, &key, now)
        {
            return Err(ApiError::TooManyAttempts);
        }
        let user = match self.store.user_id_by_email(&key).map_err(unavailable)? {
            Some(id) => self.store.user(&id).map_err(unavailable)?,
            None => None,
        };
        let phc = user
            .as_ref()
            .and_then(|u| u.password_hash.clone())
            .unwrap_or_else(|| self.decoy_hash.clone());
        let attempt = password
            .chars()
            .take(PASSWORD_CHARS_MAX + 1)
            .collect::<String>();
        let matches = self
            .cpu(move || auth::verify_password(&attempt, &phc))
            .await?;
        match user {
            Some(user) if matches && user.password_hash.is_some() => {
                let standing = self.store.standing(&user.id).map_err(unavailable)?;
                if standing.disabled_ms.is_some() {
                    return Err(ApiError::AccountDisabled);
                }
                let token = self.tokens.issue_at(&user.id, standing.generation, now);
                Ok((token, UserView::from(&user)))
            }
            _ => {
                self.login_throttle
                    .lock()
                    .expect("never poisoned")
                    .record_failure(client, &key, now);
                Err(ApiError::InvalidCredentials)
            }
        }
    }

    /// The user a token speaks for.
    pub async fn authenticate(&self, token: &str) -> Result<UserRecord, AuthFailure> {
        self.authenticate_until(token)
            .await
            .map(|(user, _expires_ms)| user)
    }

    /// The user a token speaks for, and when the token expires (ms). A token the user revoked
    /// (`revoke_tokens`) is `Unauthorized`.
    pub async fn authenticate_until(&self, token: &str) -> Result<(UserRecord, u64), AuthFailure> {
        let (identity, facts) = self
            .tokens
            .verify_with_facts(token, self.now_ms())
            .await
            .ok_or(AuthFailure::Unauthorized)?;
        let id = match identity {
            Identity::Local(id) => Some(id),
            Identity::External(claims) => self
                .store
                .user_id_by_external(&claims.sub)
                .map_err(storage_failed(AuthFailure::Unavailable))?,
        };
        let user = match id {
            Some(id) if is_valid_id(&id) => self
                .store
                .user(&id)
                .map_err(storage_failed(AuthFailure::Unavailable))?,
            _ => None,
        };
        let user = user.ok_or(AuthFailure::UserNotFound)?;
        let standing = self
            .store
            .standing(&user.id)
            .map_err(storage_failed(AuthFailure::Unavailable))?;
        // A disabled account's tokens were revoked when it was disabled; provider tokens issued
        // since are refused here.
        if standing.disabled_ms.is_some()
            || !facts.survives(standing.generation, standing.revoked_ms)
        {
            return Err(AuthFailure::Unauthorized);
        }
        Ok((user, facts.expires_ms))
    }

    /// Refuses every token of `user` issued so far, durably, before it returns (the sockets
    /// that authenticated with them are the transport's to close: `transport::revoke_sessions`).
    pub async fn revoke_tokens(&self, user: &str) -> Result<(), ApiError> {
        self.writer
            .revoke_tokens(user, self.now_ms())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// `POST /api/auth/callback`: the external provider's user, created on first call.
    pub async fn external_callback(&self, token: &str) -> Result<UserView, ApiError> {
        let Some(Identity::External(claims)) = self.tokens.verify(token, self.now_ms()).await
        else {
            return Err(ApiError::Unauthorized);
        };
        if let Some(id) = self
            .store
            .user_id_by_external(&claims.sub)
            .map_err(unavailable)?
            && let Some(user) = self.store.user(&id).map_err(unavailable)?
        {
            if self
                .store
                .standing(&user.id)
                .map_err(unavailable)?
                .disabled_ms
                .is_some()
            {
                return Err(ApiError::AccountDisabled);
            }
            return Ok(UserView::from(&user));
        }
        let new = self.new_external_user(&claims)?;
        match self.writer.create_user(new).await.map_err(unavailable)? {
            CreateUserOutcome::Created(user) | CreateUserOutcome::ExistingExternal(user) => {
                Ok(UserView::from(&user))
            }
            CreateUserOutcome::EmailTaken => Err(ApiError::EmailTaken),
        }
    }

    fn new_external_user(&self, claims: &ExternalClaims) -> Result<NewUser, ApiError> {
        if claims.sub.chars().count() > EXTERNAL_SUBJECT_CHARS_MAX {
            return Err(ApiError::BadRequest("Token subject too long".into()));
        }
        let email = match &claims.email {
            Some(email) => validate::email(email)?,
            None => validate::email(&format!("{}@external.invalid", claims.sub.to_lowercase()))
                .map_err(|_| ApiError::BadRequest("Token has no usable email".into()))?,
        };
        // The provider's names lose what a name may not hold (a bidi override, an emoji's
        // joiners) rather than refusing the user, who cannot change them here.
        let showable = |s: &str| -> String {
            s.chars()
                .filter(|&c| !c.is_control() && !validate::is_format(c))
                .collect()
        };
        let full_name = [&claims.given_name, &claims.family_name]
            .into_iter()
            .flatten()
            .map(|s| showable(s).trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let local_part = email.split('@').next().unwrap_or_default().to_owned();
        let raw_name = claims
            .name
            .as_deref()
            .map(showable)
            .filter(|n| !n.trim().is_empty())
            .or(Some(full_name).filter(|n| !n.is_empty()))
            .unwrap_or(local_part);
        let name = validate::name(&raw_name.chars().take(NAME_CHARS_MAX).collect::<String>())?;
        let avatar = claims
            .picture
            .as_deref()
            .and_then(validate::avatar_url)
            .unwrap_or_default()
            .to_owned();
        Ok(NewUser {
            id: self.mint_id(),
            name,
            email,
            avatar,
            password_hash: None,
            external_id: Some(claims.sub.clone()),
            now_ms: self.now_ms(),
        })
    }

    /// `GET /api/users`: users whose name contains `query` (case-insensitive) or whose email is
    /// exactly `query`; everyone when it is empty. Rate limited per caller, `query` at most
    /// `USER_QUERY_CHARS_MAX` characters; only an exact-email match shows its email.
    pub fn search_users(
        &self,
        caller: &str,
        query: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<PublicUser>, ApiError> {
        let limit = clamp_limit(limit, USERS_PAGE_DEFAULT, USERS_PAGE_MAX) as usize;
        let query = query
            .map(str::trim)
            .filter(|q| !q.is_empty())
            .map(str::to_lowercase);
        if query
            .as_ref()
            .is_some_and(|q| q.chars().nth(USER_QUERY_CHARS_MAX).is_some())
        {
            return Err(ApiError::BadRequest(format!(
                "q must be at most {USER_QUERY_CHARS_MAX} characters"
            )));
        }
        let allowed = self
            .search_limiter
            .lock()
            .expect("never poisoned")
            .try_take(caller, self.now_ms());
        if !allowed {
            return Err(Refusal::RateLimited.into());
        }
        let users = self
            .store
            .search_users(caller, query.as_deref(), limit)
            .map_err(unavailable)?;
        Ok(users
            .iter()
            .map(|user| match &query {
                Some(q) if user.email == *q => PublicUser::found_by_email(user),
                _ => PublicUser::from(user),
            })
            .collect())
    }
}
