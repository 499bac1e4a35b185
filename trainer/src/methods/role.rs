//! ROLE: regularised online label estimation (Cole et al. 2021; method.md "Baselines").
//!
//! A learnable estimate matrix (one logit per training image and class) is trained jointly with the
//! network. Per entry, with p the network's and q the estimate's probability (sg = stop-gradient):
//! `0.5·(−log p − log q)` on observed positives, plus on every entry that is not an observed
//! negative the cross terms `0.5·[BCE(sg(q), p) + BCE(sg(p), q)]`; the batch loss is the sum over
//! entries divided by B plus `0.5·(EPR(p) + EPR(q))` with EPR = (mean_i Σ_j · − k)²/C (C², over C times smaller a data
//! term, in Cole et al.; see `epr`).
//! Decision (ours): observed negatives give both p and q a plain negative BCE instead of the
//! cross terms, so they count as negatives everywhere.
//!
//! Initialisation ("Baselines"): observed positives at logit(0.995), the rest uniform in
//! [logit(0.4), logit(0.6)]. The observed labels are not known at construction, so every row starts
//! uniform and its observed positives are set to logit(0.995) the first time the row appears in a
//! batch, before it is used. The estimate's Adam (no weight decay) gives zero updates to rows that
//! never had a gradient, so this equals initialising the whole matrix up front. That Adam's moments
//! are part of the method's state, so a resumed run continues bit for bit.

use anyhow::{bail, Context, Result};
use tch::nn;
use tch::{Device, Kind, Tensor};

use crate::optim::Adam;

use super::epr::expected_positive_regulariser;
use super::losses::{bce, f32_logits, neg_log_1mp, neg_log_p, sum_over_batch, value, weight, Labels};
use super::{Method, MethodConfig, StepCtx, StepOut};

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

const STATE_ESTIMATES: &str = "role.estimates";
const STATE_INITIALISED: &str = "role.initialised";
/// Prefix of the estimate optimizer's tensors in the state (`role.adam.step`, `role.adam.m.…`).
const STATE_ADAM: &str = "role.adam.";

/// ROLE with its own estimate matrix, VarStore and Adam.
pub struct Role {
    k: f64,
    lr_mult: f64,
    vs: nn::VarStore,
    estimates: Tensor,
    /// [n_train] bool: rows whose observed positives were set to logit(0.995).
    initialised: Tensor,
    opt: Adam,
}

impl Role {
    /// An estimate matrix of `n_train` × `n_classes` logits on `device`.
    pub fn new(cfg: &MethodConfig, n_train: i64, n_classes: i64, device: Device) -> Result<Role> {
        let vs = nn::VarStore::new(device);
        let estimates = vs.root().uniform("estimates", &[n_train, n_classes], logit(0.4), logit(0.6));
        let opt = Adam::new(vec![("estimates".to_string(), estimates.shallow_clone(), 1.0)], 0.0);
        let initialised = Tensor::zeros([n_train], (Kind::Bool, device));
        Ok(Role { k: cfg.expected_positives, lr_mult: cfg.role_lr_mult, vs, estimates, initialised, opt })
    }

    /// Sets the observed positives of rows seen for the first time to logit(0.995).
    fn initialise_rows(&mut self, indices: &Tensor, pos: &Tensor) {
        tch::no_grad(|| {
            let fresh = self.initialised.index_select(0, indices).logical_not();
            let rows = self.estimates.index_select(0, indices);
            let set = pos.logical_and(&fresh.unsqueeze(1));
            let rows = rows.masked_fill(&set, logit(0.995));
            let _ = self.estimates.index_copy_(0, indices, &rows);
            let _ = self.initialised.index_fill_(0, indices, 1);
        });
    }
}

impl Method for Role {
    fn name(&self) -> &'static str {
        "role"
    }

    fn num_networks(&self) -> usize {
        1
    }

    fn step(&mut self, logits: &[Tensor], ctx: &StepCtx) -> StepOut {
        let x = f32_logits(&logits[0]);
        let labels = Labels::of(ctx.y);
        let indices = ctx.indices.to_device(self.vs.device()).to_kind(Kind::Int64);
        self.initialise_rows(&indices, &labels.pos.to_device(self.vs.device()));
        let e = self.estimates.index_select(0, &indices).to_device(x.device());
        let (pos, neg) = (weight(&labels.pos), weight(&labels.neg));
        let not_neg = 1.0 - &neg;
        let positives = (neg_log_p(&x) + neg_log_p(&e)) * &pos * 0.5;
        let cross = (bce(&x, &e.sigmoid().detach()) + bce(&e, &x.sigmoid().detach())) * &not_neg * 0.5;
        let negatives = (neg_log_1mp(&x) + neg_log_1mp(&e)) * &neg * 0.5;
        let regulariser = (expected_positive_regulariser(&x.sigmoid(), self.k)
            + expected_positive_regulariser(&e.sigmoid(), self.k))
            * 0.5;
        let loss = sum_over_batch(&(positives + cross + negatives)) + regulariser;
        StepOut { per_net: vec![value(&loss)], loss, flagged: vec![] }
    }

    /// One Adam step on the estimates at lr = role_lr_mult × ctx.lr, then clears their gradient.
    fn after_backward(&mut self, ctx: &StepCtx) {
        self.opt.step(self.lr_mult * ctx.lr);
        self.opt.zero_grad();
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![
            (STATE_ESTIMATES.to_string(), self.estimates.detach().copy()),
            (STATE_INITIALISED.to_string(), self.initialised.copy()),
        ];
        state.extend(self.opt.state().into_iter().map(|(n, t)| (format!("{STATE_ADAM}{n}"), t.copy())));
        state
    }

    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()> {
        let find = |name: &str| {
            state.iter().find(|(n, _)| n == name).map(|(_, t)| t).with_context(|| format!("ROLE state lacks {name:?}"))
        };
        let (est, init) = (find(STATE_ESTIMATES)?, find(STATE_INITIALISED)?);
        if est.size() != self.estimates.size() || init.size() != self.initialised.size() {
            bail!(
                "ROLE state has estimates {:?} and flags {:?}; this run needs {:?} and {:?}",
                est.size(),
                init.size(),
                self.estimates.size(),
                self.initialised.size()
            );
        }
        let adam: Vec<(String, Tensor)> = state
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(STATE_ADAM).map(|n| (n.to_string(), t.shallow_clone())))
            .collect();
        if adam.is_empty() {
            bail!("ROLE state lacks its estimate optimizer (a checkpoint written before 2026-11-30 cannot resume exactly): start the run again");
        }
        self.opt.load_state(&adam).context("ROLE's estimate optimizer")?;
        tch::no_grad(|| {
            self.estimates.copy_(&est.to_kind(Kind::Float));
            self.initialised.copy_(&init.to_kind(Kind::Bool));
        });
        Ok(())
    }
}
