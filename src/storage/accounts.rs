//! Reads of an account's standing (its token generation, whether it is disabled) and of the
//! users table page by page, for authentication and the operator's commands.

use redb::{ReadableDatabase, ReadableTable};

use super::records::decode;
use super::tables::{DISABLED_USERS, TOKEN_REVOCATIONS, USERS};
use super::{Store, StoreError, UserRecord};

/// What decides whether a user's token is still good, read in one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// Tokens of an earlier generation are refused.
    pub generation: u64,
    /// When the generation was last raised (ms); 0 if never.
    pub revoked_ms: u64,
    /// When the operator disabled the account (ms), if it is disabled.
    pub disabled_ms: Option<u64>,
}

impl Store {
    /// The user's token generation and whether the account is disabled.
    pub fn standing(&self, user: &str) -> Result<Standing, StoreError> {
        let tx = self.db.begin_read()?;
        let (generation, revoked_ms) = tx
            .open_table(TOKEN_REVOCATIONS)?
            .get(user)?
            .map_or((0, 0), |entry| entry.value());
        let disabled_ms = tx
            .open_table(DISABLED_USERS)?
            .get(user)?
            .map(|entry| entry.value());
        Ok(Standing {
            generation,
            revoked_ms,
            disabled_ms,
        })
    }

    /// Up to `limit` users with ids after `after` (all when `None`), in id order, each with its
    /// standing: one range scan.
    pub fn users_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(UserRecord, Standing)>, StoreError> {
        let tx = self.db.begin_read()?;
        let users = tx.open_table(USERS)?;
        let revocations = tx.open_table(TOKEN_REVOCATIONS)?;
        let disabled = tx.open_table(DISABLED_USERS)?;
        let range = match after {
            Some(after) => users
                .range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?,
            None => users.iter()?,
        };
        let mut page = Vec::new();
        for entry in range.take(limit) {
            let (id, bytes) = entry?;
            let user: UserRecord =
                decode(bytes.value()).map_err(StoreError::corrupt("users", id.value()))?;
            let (generation, revoked_ms) = revocations
                .get(id.value())?
                .map_or((0, 0), |entry| entry.value());
            let disabled_ms = disabled.get(id.value())?.map(|entry| entry.value());
            page.push((
                user,
                Standing {
                    generation,
                    revoked_ms,
                    disabled_ms,
                },
            ));
        }
        Ok(page)
    }
}
