//! Deliberate faults for the fault-injection tests (like `DevChain::drop_connections`):
//! each armed fault fires once, at the named actor's next safe point mid-window.
//!
//! Compiled in only with the `fault-injection` feature, which the tests enable (a
//! dev-dependency of the crate on itself); in a production build every hook is empty.

use crate::context::ActorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The actor's message handler panics.
    PanicIn(ActorKind),
    /// The engine thread (which holds the model) panics: the model is lost and must come
    /// back from the checkpoint.
    EnginePanic,
    /// The model moves away from the network's at the next window's start (a bit flip, a
    /// missed step): under a compressed exchange the node must notice and resynchronise.
    ModelDrift,
}

/// The armed faults of one node.
#[derive(Debug, Default)]
pub struct Faults {
    #[cfg(feature = "fault-injection")]
    armed: std::sync::Mutex<std::collections::HashSet<Fault>>,
}

#[cfg(feature = "fault-injection")]
impl Faults {
    pub fn arm(&self, fault: Fault) {
        crate::context::lock(&self.armed).insert(fault);
    }

    pub fn is_armed(&self, fault: Fault) -> bool {
        crate::context::lock(&self.armed).contains(&fault)
    }

    /// True once for an armed fault, which is then disarmed.
    fn take(&self, fault: Fault) -> bool {
        crate::context::lock(&self.armed).remove(&fault)
    }
}

#[cfg(not(feature = "fault-injection"))]
impl Faults {
    fn take(&self, _fault: Fault) -> bool {
        false
    }
}

impl Faults {
    /// Panics in the handler of `kind` when that fault is armed.
    pub fn maybe_panic(&self, kind: ActorKind) {
        if self.take(Fault::PanicIn(kind)) {
            panic!("injected fault: panic in {kind}");
        }
    }

    /// True once when [`Fault::ModelDrift`] is armed: the caller moves its model.
    pub fn take_model_drift(&self) -> bool {
        self.take(Fault::ModelDrift)
    }

    /// Panics on the engine thread when [`Fault::EnginePanic`] is armed.
    pub fn maybe_panic_engine(&self) {
        if self.take(Fault::EnginePanic) {
            panic!("injected fault: panic in the training engine");
        }
    }
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::*;

    #[test]
    fn an_armed_fault_fires_once() {
        let faults = Faults::default();
        faults.arm(Fault::PanicIn(ActorKind::Trainer));
        assert!(!faults.take(Fault::PanicIn(ActorKind::WindowClock)));
        assert!(faults.take(Fault::PanicIn(ActorKind::Trainer)));
        assert!(!faults.take(Fault::PanicIn(ActorKind::Trainer)));
    }
}
