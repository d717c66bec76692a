//! The operator's changes to an account (`palaver user set-password`, `disable`, `enable`),
//! applied by the writer like every other write: in a batch, answered after the commit.

use redb::ReadableTable;

use super::{StoreError, Tables, UserRecord, encode};

/// One change to an existing account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountChange {
    /// Replaces the argon2id PHC string of a user who has a password.
    SetPassword {
        user: String,
        password_hash: String,
        now_ms: u64,
    },
    /// Disables the account (`true`, from `now_ms` on) or enables it again (`false`).
    SetDisabled {
        user: String,
        disabled: bool,
        now_ms: u64,
    },
}

impl Tables<'_> {
    pub(super) fn change_account(
        &mut self,
        change: AccountChange,
    ) -> Result<Option<UserRecord>, StoreError> {
        match change {
            AccountChange::SetPassword {
                user,
                password_hash,
                now_ms,
            } => {
                let Some(mut record) = self.user(&user)? else {
                    return Ok(None);
                };
                record.password_hash = Some(password_hash);
                record.updated_ms = record.updated_ms.max(now_ms);
                self.users
                    .insert(record.id.as_str(), encode(&record).as_slice())?;
                Ok(Some(record))
            }
            AccountChange::SetDisabled {
                user,
                disabled,
                now_ms,
            } => {
                let Some(record) = self.user(&user)? else {
                    return Ok(None);
                };
                if disabled {
                    // Disabling twice keeps the first time.
                    if self.disabled.get(user.as_str())?.is_none() {
                        self.disabled.insert(user.as_str(), now_ms)?;
                    }
                } else {
                    self.disabled.remove(user.as_str())?;
                }
                Ok(Some(record))
            }
        }
    }
}
