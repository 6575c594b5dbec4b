//! Tasks owned by an actor's state: aborted when the state is dropped, which happens when
//! the actor stops or crashes, so a restarted actor never runs beside its predecessor's
//! tasks.

use tokio::task::JoinHandle;

pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
