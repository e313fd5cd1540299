//! Sync state per channel (`sync_state`) and the clock state (`clock_state`, one row).

use async_trait::async_trait;
use sqlx::{Executor, Sqlite};
use sync_core::{Channel, ChannelState, StoreError, SyncStateStore};
use sync_hlc::{ClockState, Watermarks};

use crate::{
    error::{corrupt, db_error, to_i64, to_u64},
    SqliteStore,
};

const LOAD: &str = "SELECT own_json, peer_json FROM sync_state WHERE channel = ?1";

const SAVE: &str = "\
INSERT INTO sync_state (channel, own_json, peer_json) VALUES (?1, ?2, ?3) \
ON CONFLICT (channel) DO UPDATE SET own_json = excluded.own_json, peer_json = excluded.peer_json";

const LOAD_CLOCK: &str = "SELECT wall_time, counter FROM clock_state WHERE id = 1";

const SAVE_CLOCK: &str = "\
INSERT INTO clock_state (id, wall_time, counter) VALUES (1, ?1, ?2) \
ON CONFLICT (id) DO UPDATE SET wall_time = excluded.wall_time, counter = excluded.counter";

fn encode(w: &Watermarks) -> Result<String, StoreError> {
    serde_json::to_string(w).map_err(|e| StoreError::Invalid(format!("watermarks: {e}")))
}

fn decode(channel: &Channel, which: &str, json: &str) -> Result<Watermarks, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt(&format!("{which} watermarks of {channel}"), e))
}

async fn save_clock<'e, E>(executor: E, clock: ClockState) -> Result<(), StoreError>
where
    E: Executor<'e, Database = Sqlite>,
{
    sqlx::query(SAVE_CLOCK)
        .bind(to_i64("clock wall time", clock.wall_time)?)
        .bind(i64::from(clock.counter))
        .execute(executor)
        .await
        .map_err(|e| db_error("saving the clock state", e))?;
    Ok(())
}

#[async_trait]
impl SyncStateStore for SqliteStore {
    async fn load(&self, channel: &Channel) -> Result<ChannelState, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(LOAD)
            .bind(channel.state_key())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("loading sync state", e))?;
        match row {
            None => Ok(ChannelState::default()),
            Some((own, peer)) => Ok(ChannelState {
                own: decode(channel, "own", &own)?,
                peer: decode(channel, "peer", &peer)?,
            }),
        }
    }

    async fn load_clock(&self) -> Result<Option<ClockState>, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(LOAD_CLOCK)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_error("loading the clock state", e))?;
        row.map(|(wall_time, counter)| {
            Ok(ClockState {
                wall_time: to_u64("clock wall time", wall_time)?,
                counter: u16::try_from(counter).map_err(|_| corrupt("clock counter", counter))?,
            })
        })
        .transpose()
    }

    async fn commit(
        &self,
        channel: &Channel,
        state: &ChannelState,
        clock: ClockState,
    ) -> Result<(), StoreError> {
        const DOING: &str = "committing sync state";
        let own = encode(&state.own)?;
        let peer = encode(&state.peer)?;
        let mut tx = self.begin_write(DOING).await?;
        sqlx::query(SAVE)
            .bind(channel.state_key())
            .bind(own)
            .bind(peer)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(DOING, e))?;
        save_clock(&mut *tx, clock).await?;
        tx.commit().await.map_err(|e| db_error(DOING, e))
    }

    async fn save_clock(&self, clock: ClockState) -> Result<(), StoreError> {
        save_clock(&self.writer, clock).await
    }
}
