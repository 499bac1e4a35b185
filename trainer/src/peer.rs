//! One network of a run with its parameters and its own optimizer: what setup builds and the
//! loop trains.

use cls_models::Net;
use tch::nn;

use crate::optim::Adam;

/// One network with its parameters and optimizer.
pub struct Peer {
    pub vs: nn::VarStore,
    pub net: Net,
    pub adam: Adam,
}
