//! WindowClock: blocks to windows. Publishes where the clock stands (the Trainer's engine
//! reads it between micro-batches) and tells the Trainer when a window starts.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info};

use crate::context::{ActorKind, ClockState, MinerContext, lookup};
use crate::messages::{TrainerMsg, WindowClockMsg};

pub struct WindowClock;

pub struct WindowClockState {
    ctx: Arc<MinerContext>,
}

impl Actor for WindowClock {
    type Msg = WindowClockMsg;
    type State = WindowClockState;
    type Arguments = Arc<MinerContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<MinerContext>,
    ) -> Result<Self::State, ActorProcessingErr> {
        ctx.telemetry.stats.record_start(ActorKind::WindowClock);
        Ok(WindowClockState { ctx })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let ctx = &state.ctx;
        match msg {
            WindowClockMsg::Block(block) => {
                ctx.faults.maybe_panic(ActorKind::WindowClock);
                let window = ctx.network.schedule.window_of_block(block.number);
                let before = ctx.clock_now();
                // A block from before the clock (a reconnect replaying a block) changes nothing.
                if before.started && block.number <= before.block {
                    return Ok(());
                }
                ctx.network.clock.send_replace(ClockState { block: block.number, window, started: true });
                debug!(miner = %ctx.id.name, block = block.number, window, "block");
                if !before.started || window != before.window {
                    info!(miner = %ctx.id.name, window, block = block.number, "window started");
                    if let Some(trainer) = lookup::<TrainerMsg>(&ctx.id.name, ctx.window_actor()) {
                        let _ = trainer.cast(TrainerMsg::WindowStarted { window, block: block.number });
                    }
                }
            }
        }
        Ok(())
    }
}
