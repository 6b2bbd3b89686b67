//! Events the services exchange over RabbitMQ.
//!
//! They are notifications, not the record: PostgreSQL holds the truth, and a
//! lost event costs latency, never a command (the monitor re-announces).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::command::CommandStatus;

/// The most devices one [`Event::CommandsQueued`] names: about 370 KB of
/// JSON, far below RabbitMQ's message limit, and a board update a sync
/// replica makes in a few milliseconds.
pub const DEVICES_PER_EVENT: usize = 10_000;

/// One message on the `<instance>.sync` fanout exchange. The AMQP routing
/// key and the outbox `topic` column carry [`Event::topic`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A command waits for its device (new, or re-announced by the monitor).
    CommandQueued {
        command_id: Uuid,
        device_id: Uuid,
        tenant_id: Uuid,
        /// The trace id of the request that queued it, for the logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    /// Commands wait for these devices: those of one batch (`POST
    /// /commands/bulk`), or those the monitor announces again. One message
    /// for up to [`DEVICES_PER_EVENT`] devices, so a command sent to a
    /// fleet costs the broker and every sync replica a few messages rather
    /// than one per device.
    CommandsQueued {
        tenant_id: Uuid,
        /// The batch, when the commands are one batch's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch_id: Option<Uuid>,
        device_ids: Vec<Uuid>,
    },
    /// A command reached a terminal state.
    CommandFinished {
        command_id: Uuid,
        device_id: Uuid,
        tenant_id: Uuid,
        status: CommandStatus,
    },
    /// A device was decommissioned: its tokens must stop working now.
    DeviceDecommissioned { device_id: Uuid, tenant_id: Uuid },
}

impl Event {
    /// The trace id the event carries, if any.
    pub fn trace_id(&self) -> Option<&str> {
        match self {
            Event::CommandQueued { trace_id, .. } => trace_id.as_deref(),
            _ => None,
        }
    }

    pub fn topic(&self) -> &'static str {
        match self {
            Event::CommandQueued { .. } => "command.queued",
            Event::CommandsQueued { .. } => "commands.queued",
            Event::CommandFinished { .. } => "command.finished",
            Event::DeviceDecommissioned { .. } => "device.decommissioned",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_their_type_tag() {
        let e = Event::DeviceDecommissioned {
            device_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "device_decommissioned");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
        assert_eq!(e.topic(), "device.decommissioned");
    }
}
