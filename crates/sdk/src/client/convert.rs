//! The client's edge: SDK types to the wire protocol's messages and back. Nothing else in the
//! client reads or builds a generated type's fields.
//!
//! Values this SDK cannot read in an answer (a transaction state it does not know, an id that is
//! not a UUID) are [`ClientError::Protocol`]; event kinds it does not know are kept instead (see
//! [`Event`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::definition::{Body, Call, Definition, Retry};
use super::model::{
    Branch, CoordinatorInfo, Event, ListPage, ParticipantInfo, Started, Transaction,
};
use super::saga::Step;
use super::two_phase::Branch as TwoPhaseBranch;
use super::{ClientError, ListQuery};
use crate::proto::{self, start_request};
use crate::types::{StepKind, StepStatus, Target, TxId, TxKind, TxState};

/// Whole milliseconds, rounded up so that a small non-zero duration never becomes 0 (which the
/// protocol reads as "use the default").
pub(super) fn millis(duration: Duration) -> u64 {
    let ms = duration.as_millis() + u128::from(!duration.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Unix milliseconds of `time`; times before 1970 clamp to the epoch plus one millisecond, so they
/// still bound the query (0 would mean unbounded).
fn unix_ms(time: SystemTime) -> i64 {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(1)
        .max(1);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// A protocol time (Unix milliseconds, possibly negative).
fn time(ms: i64) -> SystemTime {
    let magnitude = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// A protocol time where 0 means "none".
fn optional_time(ms: i64) -> Option<SystemTime> {
    (ms != 0).then(|| time(ms))
}

/// A protocol string where empty means "none".
fn optional(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

fn protocol(what: String) -> ClientError {
    ClientError::Protocol(what)
}

pub(super) fn tx_id(text: &str) -> Result<TxId, ClientError> {
    text.parse()
        .map_err(|_| protocol(format!("tx_id {text:?} is not a transaction id")))
}

fn retry(retry: Retry) -> proto::RetryPolicy {
    proto::RetryPolicy {
        max_attempts: retry.max_attempts,
        initial_backoff_ms: millis(retry.initial),
        max_backoff_ms: millis(retry.max),
    }
}

/// The target's (service, endpoint) pair: exactly one is set.
fn target(target: Target) -> (String, String) {
    match target {
        Target::Service(service) => (service, String::new()),
        Target::Endpoint(endpoint) => (String::new(), endpoint),
    }
}

fn step_kind(kind: StepKind) -> proto::StepKind {
    match kind {
        StepKind::Compensatable => proto::StepKind::Compensatable,
        StepKind::Pivot => proto::StepKind::Pivot,
        StepKind::Retriable => proto::StepKind::Retriable,
    }
}

fn saga_step(step: Step, stage: u32) -> proto::SagaStep {
    let Call {
        name,
        target: to,
        action,
        payload,
        timeout,
        retry: policy,
    } = step.call;
    let (service, endpoint) = target(to);
    proto::SagaStep {
        action: action.unwrap_or_else(|| name.clone()),
        name,
        service,
        endpoint,
        compensate: step.compensate.unwrap_or_default(),
        payload,
        kind: step_kind(step.kind) as i32,
        stage,
        timeout_ms: timeout.map(millis).unwrap_or(0),
        retry: policy.map(retry),
    }
}

fn two_phase_branch(branch: TwoPhaseBranch) -> proto::TwoPhaseBranch {
    let Call {
        name,
        target: to,
        action,
        payload,
        timeout,
        retry: policy,
    } = branch.call;
    let (service, endpoint) = target(to);
    proto::TwoPhaseBranch {
        action: action.unwrap_or_else(|| name.clone()),
        name,
        service,
        endpoint,
        payload,
        timeout_ms: timeout.map(millis).unwrap_or(0),
        retry: policy.map(retry),
    }
}

/// The `Start` request for `definition` (without waiting).
pub(super) fn start_request(definition: Definition) -> proto::StartRequest {
    let body = match definition.body {
        Body::Saga(stages) => {
            let steps = stages
                .into_iter()
                .enumerate()
                .flat_map(|(stage, steps)| {
                    let stage = u32::try_from(stage).unwrap_or(u32::MAX);
                    steps.into_iter().map(move |step| saga_step(step, stage))
                })
                .collect();
            start_request::Definition::Saga(proto::Saga { steps })
        }
        Body::TwoPhase {
            branches,
            prepare_timeout,
        } => start_request::Definition::TwoPhase(proto::TwoPhase {
            branches: branches.into_iter().map(two_phase_branch).collect(),
            prepare_timeout_ms: prepare_timeout.map(millis).unwrap_or(0),
        }),
    };
    let options = definition.options;
    proto::StartRequest {
        definition: Some(body),
        idempotency_key: options.idempotency_key.unwrap_or_default(),
        labels: options.labels,
        timeout_ms: options.timeout.map(millis).unwrap_or(0),
        wait: false,
        wait_timeout_ms: 0,
    }
}

fn tx_state_proto(state: TxState) -> proto::TxState {
    match state {
        TxState::Running => proto::TxState::Running,
        TxState::Compensating => proto::TxState::Compensating,
        TxState::Committed => proto::TxState::Committed,
        TxState::Compensated => proto::TxState::Compensated,
        TxState::Failed => proto::TxState::Failed,
        TxState::Preparing => proto::TxState::Preparing,
        TxState::Committing => proto::TxState::Committing,
        TxState::Aborting => proto::TxState::Aborting,
        TxState::Aborted => proto::TxState::Aborted,
    }
}

pub(super) fn list_request(query: ListQuery) -> proto::ListRequest {
    proto::ListRequest {
        states: query
            .states
            .into_iter()
            .map(|s| tx_state_proto(s) as i32)
            .collect(),
        labels: query.labels,
        created_after_ms: query.created_after.map(unix_ms).unwrap_or(0),
        created_before_ms: query.created_before.map(unix_ms).unwrap_or(0),
        limit: query.limit,
        page_token: query.page_token.unwrap_or_default(),
    }
}

fn tx_state(value: i32) -> Result<TxState, ClientError> {
    Ok(match proto::TxState::try_from(value) {
        Ok(proto::TxState::Running) => TxState::Running,
        Ok(proto::TxState::Compensating) => TxState::Compensating,
        Ok(proto::TxState::Committed) => TxState::Committed,
        Ok(proto::TxState::Compensated) => TxState::Compensated,
        Ok(proto::TxState::Failed) => TxState::Failed,
        Ok(proto::TxState::Preparing) => TxState::Preparing,
        Ok(proto::TxState::Committing) => TxState::Committing,
        Ok(proto::TxState::Aborting) => TxState::Aborting,
        Ok(proto::TxState::Aborted) => TxState::Aborted,
        Ok(proto::TxState::Unspecified) | Err(_) => {
            return Err(protocol(format!(
                "transaction state {value} is not one this SDK knows (a newer coordinator?)"
            )))
        }
    })
}

fn tx_kind(value: i32) -> Result<TxKind, ClientError> {
    match proto::TxKind::try_from(value) {
        Ok(proto::TxKind::Saga) => Ok(TxKind::Saga),
        Ok(proto::TxKind::TwoPhase) => Ok(TxKind::TwoPhase),
        Ok(proto::TxKind::Unspecified) | Err(_) => Err(protocol(format!(
            "transaction kind {value} is not one this SDK knows (a newer coordinator?)"
        ))),
    }
}

/// Unspecified is the compensatable default it stands for.
fn step_kind_of(value: i32) -> Result<StepKind, ClientError> {
    match proto::StepKind::try_from(value) {
        Ok(proto::StepKind::Unspecified | proto::StepKind::Compensatable) => {
            Ok(StepKind::Compensatable)
        }
        Ok(proto::StepKind::Pivot) => Ok(StepKind::Pivot),
        Ok(proto::StepKind::Retriable) => Ok(StepKind::Retriable),
        Err(_) => Err(protocol(format!(
            "step kind {value} is not one this SDK knows (a newer coordinator?)"
        ))),
    }
}

/// A branch's target as the coordinator prints it: an endpoint URL or a service name.
fn target_of(text: String) -> Target {
    if text.starts_with("http://") || text.starts_with("https://") {
        Target::Endpoint(text)
    } else {
        Target::Service(text)
    }
}

fn branch(wire: proto::Branch) -> Result<Branch, ClientError> {
    let status: StepStatus = wire.state.parse().map_err(|_| {
        protocol(format!(
            "branch {} state {:?} is not one this SDK knows (a newer coordinator?)",
            wire.index, wire.state
        ))
    })?;
    Ok(Branch {
        index: wire.index,
        name: wire.name,
        stage: wire.stage,
        kind: step_kind_of(wire.kind)?,
        target: target_of(wire.target),
        action: wire.action,
        compensate: optional(wire.compensate),
        status,
        attempts: wire.attempts,
        output: wire.output,
        last_error: optional(wire.last_error),
    })
}

pub(super) fn transaction(wire: proto::Transaction) -> Result<Transaction, ClientError> {
    Ok(Transaction {
        id: tx_id(&wire.tx_id)?,
        kind: tx_kind(wire.kind)?,
        state: tx_state(wire.state)?,
        labels: wire.labels,
        idempotency_key: optional(wire.idempotency_key),
        created_at: time(wire.created_at_ms),
        updated_at: time(wire.updated_at_ms),
        deadline: optional_time(wire.deadline_at_ms),
        last_error: optional(wire.last_error),
        branches: wire
            .branches
            .into_iter()
            .map(branch)
            .collect::<Result<_, _>>()?,
        owner: optional(wire.owner),
        epoch: wire.epoch,
        in_doubt: wire.in_doubt,
    })
}

pub(super) fn started(wire: &proto::StartResponse) -> Result<Started, ClientError> {
    Ok(Started {
        tx_id: tx_id(&wire.tx_id)?,
        created: wire.created,
    })
}

pub(super) fn list_page(wire: proto::ListResponse) -> Result<ListPage, ClientError> {
    Ok(ListPage {
        transactions: wire
            .transactions
            .into_iter()
            .map(transaction)
            .collect::<Result<_, _>>()?,
        next_page_token: optional(wire.next_page_token),
    })
}

/// An event; a kind this SDK does not know is kept with `kind: None` (see [`Event`]).
pub(super) fn event(wire: proto::TxEvent) -> Result<Event, ClientError> {
    Ok(Event {
        tx_id: tx_id(&wire.tx_id)?,
        seq: wire.seq,
        at: time(wire.at_ms),
        kind: wire.kind.parse().ok(),
        kind_name: wire.kind,
        branch: u32::try_from(wire.branch).ok(),
        detail: wire.detail,
    })
}

pub(super) fn participant(wire: proto::ParticipantEndpoint) -> ParticipantInfo {
    ParticipantInfo {
        service: wire.service,
        endpoint: wire.endpoint,
        weight: wire.weight,
        zone: optional(wire.zone),
        expires_at: optional_time(wire.expires_at_ms),
        policy: optional(wire.policy),
        outstanding: wire.outstanding,
        ejected_until: optional_time(wire.ejected_until_ms),
    }
}

pub(super) fn coordinator(wire: proto::CoordinatorInfo) -> CoordinatorInfo {
    CoordinatorInfo {
        id: wire.id,
        address: wire.address,
        started_at: time(wire.started_at_ms),
        heartbeat_at: time(wire.heartbeat_at_ms),
        version: wire.version,
        owned: wire.owned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Saga, Tcc, TwoPhase};
    use crate::types::EventKind;

    fn saga_of(request: &proto::StartRequest) -> &proto::Saga {
        match &request.definition {
            Some(start_request::Definition::Saga(saga)) => saga,
            other => panic!("expected a saga, got {other:?}"),
        }
    }

    #[test]
    fn builds_the_saga_start_request() {
        let saga = Saga::new()
            .step(
                Step::new("reserve", "inventory")
                    .action("reserve")
                    .compensate("release")
                    .json(&serde_json::json!({"sku": "A1", "qty": 2}))
                    .unwrap()
                    .timeout(Duration::from_secs(2))
                    .retry(4, Duration::from_millis(50), Duration::from_secs(1)),
            )
            .step(
                Step::to_endpoint("charge", "http://127.0.0.1:9001")
                    .action("charge")
                    .compensate("refund")
                    .payload(b"raw".to_vec()),
            )
            .step(Step::new("ship", "shipping").action("ship").pivot())
            .parallel(vec![
                Step::new("email", "notify").retriable(),
                Step::new("audit", "audit").action("record").retriable(),
            ])
            .step(Step::new("close", "orders"))
            .idempotency_key("order-42")
            .label("order", "42")
            .label("team", "shop")
            .timeout(Duration::from_secs(30));
        let definition = Definition::from(saga);
        assert_eq!(definition.kind(), TxKind::Saga);
        assert_eq!(definition.idempotency_key(), Some("order-42"));
        let request = start_request(definition);

        assert_eq!(request.idempotency_key, "order-42");
        assert_eq!(request.labels.len(), 2);
        assert_eq!(request.labels["order"], "42");
        assert_eq!(request.timeout_ms, 30_000);
        assert!(!request.wait);

        let steps = &saga_of(&request).steps;
        let stages: Vec<(&str, u32)> = steps.iter().map(|s| (s.name.as_str(), s.stage)).collect();
        assert_eq!(
            stages,
            [
                ("reserve", 0),
                ("charge", 1),
                ("ship", 2),
                ("email", 3),
                ("audit", 3),
                ("close", 4)
            ]
        );

        let reserve = &steps[0];
        assert_eq!(reserve.service, "inventory");
        assert_eq!(reserve.endpoint, "");
        assert_eq!(reserve.action, "reserve");
        assert_eq!(reserve.compensate, "release");
        assert_eq!(reserve.kind(), proto::StepKind::Compensatable);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&reserve.payload).unwrap(),
            serde_json::json!({"sku": "A1", "qty": 2})
        );
        assert_eq!(reserve.timeout_ms, 2_000);
        assert_eq!(
            reserve.retry,
            Some(proto::RetryPolicy {
                max_attempts: 4,
                initial_backoff_ms: 50,
                max_backoff_ms: 1_000
            })
        );

        let charge = &steps[1];
        assert_eq!(charge.service, "");
        assert_eq!(charge.endpoint, "http://127.0.0.1:9001");
        assert_eq!(charge.payload, b"raw");
        assert_eq!(charge.timeout_ms, 0);
        assert_eq!(charge.retry, None);

        assert_eq!(steps[2].kind(), proto::StepKind::Pivot);
        assert_eq!(steps[2].compensate, "");
        assert_eq!(steps[3].kind(), proto::StepKind::Retriable);
        // The action defaults to the step's name.
        assert_eq!(steps[3].action, "email");
        assert_eq!(steps[4].action, "record");
    }

    #[test]
    fn empty_options_are_protocol_defaults() {
        let request = start_request(
            Saga::new()
                .parallel(vec![])
                .step(Step::new("a", "s"))
                .into(),
        );
        assert_eq!(request.idempotency_key, "");
        assert!(request.labels.is_empty());
        assert_eq!(request.timeout_ms, 0);
        // An empty parallel group does not use up a stage number.
        assert_eq!(saga_of(&request).steps[0].stage, 0);
    }

    #[test]
    fn builds_the_two_phase_start_request() {
        let request = start_request(
            TwoPhase::new()
                .branch(TwoPhaseBranch::new("debit", "bank-a").json(&5).unwrap())
                .branch(
                    TwoPhaseBranch::to_endpoint("credit", "http://127.0.0.1:9001")
                        .action("credit_account")
                        .timeout(Duration::from_millis(250))
                        .retry(3, Duration::from_millis(10), Duration::from_millis(100)),
                )
                .prepare_timeout(Duration::from_secs(2))
                .idempotency_key("t-1")
                .label("kind", "transfer")
                .timeout(Duration::from_secs(9))
                .into(),
        );
        let Some(start_request::Definition::TwoPhase(tp)) = &request.definition else {
            panic!("expected a two-phase definition");
        };
        assert_eq!(tp.prepare_timeout_ms, 2000);
        assert_eq!(tp.branches[0].service, "bank-a");
        assert_eq!(tp.branches[0].action, "debit");
        assert_eq!(tp.branches[0].payload, b"5");
        assert_eq!(tp.branches[1].endpoint, "http://127.0.0.1:9001");
        assert_eq!(tp.branches[1].action, "credit_account");
        assert_eq!(tp.branches[1].timeout_ms, 250);
        assert_eq!(tp.branches[1].retry.map(|r| r.max_attempts), Some(3));
        assert_eq!(request.idempotency_key, "t-1");
        assert_eq!(request.labels["kind"], "transfer");
        assert_eq!(request.timeout_ms, 9000);
    }

    #[test]
    fn tcc_is_the_same_protocol() {
        let tcc = Definition::from(
            Tcc::new()
                .participant(TwoPhaseBranch::new("hold", "hotel"))
                .try_timeout(Duration::from_secs(1))
                .label("trip", "7"),
        );
        let tp = Definition::from(
            TwoPhase::new()
                .branch(TwoPhaseBranch::new("hold", "hotel"))
                .prepare_timeout(Duration::from_secs(1))
                .label("trip", "7"),
        );
        assert_eq!(tcc, tp);
        assert_eq!(tcc.kind(), TxKind::TwoPhase);
        assert_eq!(start_request(tcc), start_request(tp));
    }

    #[test]
    fn millis_rounds_up_but_keeps_zero() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 2);
        assert_eq!(millis(Duration::from_secs(2)), 2_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn list_query_converts_to_the_request() {
        let query = ListQuery {
            states: vec![TxState::Failed, TxState::Running],
            labels: [("order".to_string(), "42".to_string())].into(),
            created_after: Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)),
            created_before: None,
            limit: 10,
            page_token: Some("p2".into()),
        };
        let request = list_request(query);
        assert_eq!(
            request.states,
            [
                proto::TxState::Failed as i32,
                proto::TxState::Running as i32
            ]
        );
        assert_eq!(request.labels["order"], "42");
        assert_eq!(request.created_after_ms, 1_700_000_000_000);
        assert_eq!(request.created_before_ms, 0);
        assert_eq!(request.limit, 10);
        assert_eq!(request.page_token, "p2");
    }

    #[test]
    fn every_state_survives_the_round_trip() {
        for state in TxState::ALL {
            assert_eq!(tx_state(tx_state_proto(state) as i32).unwrap(), state);
        }
        for bad in [0, 99] {
            let err = tx_state(bad).unwrap_err();
            assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        }
    }

    const ID: &str = "01890a5d-ac96-774b-bcce-b302099a8057";

    #[test]
    fn transactions_convert_with_their_branches() {
        let wire = proto::Transaction {
            tx_id: ID.into(),
            kind: proto::TxKind::Saga as i32,
            state: proto::TxState::Compensated as i32,
            created_at_ms: 1_700_000_000_000,
            updated_at_ms: 1_700_000_000_250,
            last_error: "charge: declined".into(),
            branches: vec![
                proto::Branch {
                    index: 0,
                    name: "reserve".into(),
                    kind: proto::StepKind::Unspecified as i32,
                    target: "inventory".into(),
                    action: "reserve".into(),
                    compensate: "release".into(),
                    state: "compensated".into(),
                    ..proto::Branch::default()
                },
                proto::Branch {
                    index: 1,
                    name: "charge".into(),
                    kind: proto::StepKind::Pivot as i32,
                    target: "https://pay:9000".into(),
                    state: "failed".into(),
                    ..proto::Branch::default()
                },
            ],
            ..proto::Transaction::default()
        };
        let tx = transaction(wire.clone()).unwrap();
        assert_eq!(tx.id.to_string(), ID);
        assert_eq!((tx.kind, tx.state), (TxKind::Saga, TxState::Compensated));
        assert_eq!(
            tx.created_at,
            UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)
        );
        assert_eq!(tx.deadline, None);
        assert_eq!(tx.idempotency_key, None);
        assert_eq!(tx.owner, None);
        assert_eq!(tx.last_error.as_deref(), Some("charge: declined"));
        let reserve = tx.branch("reserve").unwrap();
        assert_eq!(reserve.kind, StepKind::Compensatable);
        assert_eq!(reserve.target, Target::Service("inventory".into()));
        assert_eq!(reserve.compensate.as_deref(), Some("release"));
        assert_eq!(reserve.status, StepStatus::Compensated);
        let charge = &tx.branches[1];
        assert_eq!(charge.target, Target::Endpoint("https://pay:9000".into()));
        assert_eq!(charge.compensate, None);
        assert_eq!(charge.status, StepStatus::Failed);

        let mut unknown = wire.clone();
        unknown.branches[0].state = "teleported".into();
        assert!(matches!(
            transaction(unknown),
            Err(ClientError::Protocol(m)) if m.contains("teleported")
        ));
        let mut bad_id = wire;
        bad_id.tx_id = "t1".into();
        assert!(matches!(transaction(bad_id), Err(ClientError::Protocol(_))));
    }

    #[test]
    fn unknown_event_kinds_are_kept_by_name() {
        let wire = |kind: &str, branch: i32| proto::TxEvent {
            tx_id: ID.into(),
            seq: 3,
            at_ms: 1_000,
            kind: kind.into(),
            branch,
            detail: "d".into(),
        };
        let known = event(wire("commit_ok", 2)).unwrap();
        assert_eq!(known.kind, Some(EventKind::CommitOk));
        assert_eq!(known.kind_name, "commit_ok");
        assert_eq!(known.branch, Some(2));
        assert_eq!(known.at, UNIX_EPOCH + Duration::from_secs(1));
        let newer = event(wire("quorum_reached", -1)).unwrap();
        assert_eq!(newer.kind, None);
        assert_eq!(newer.kind_name, "quorum_reached");
        assert_eq!(newer.branch, None);
    }

    #[test]
    fn participants_keep_their_balancing_state() {
        let info = participant(proto::ParticipantEndpoint {
            service: "pay".into(),
            endpoint: "http://10.0.0.1:9000".into(),
            weight: 2,
            zone: String::new(),
            expires_at_ms: 0,
            policy: "least_outstanding".into(),
            outstanding: 4,
            ejected_until_ms: 5_000,
        });
        assert_eq!(info.zone, None);
        assert_eq!(info.expires_at, None);
        assert_eq!(info.policy.as_deref(), Some("least_outstanding"));
        assert_eq!(info.outstanding, 4);
        assert_eq!(
            info.ejected_until,
            Some(UNIX_EPOCH + Duration::from_secs(5))
        );
        assert_eq!(time(-1_000), UNIX_EPOCH - Duration::from_secs(1));
    }
}
