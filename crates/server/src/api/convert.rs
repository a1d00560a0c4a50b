//! Between the wire and the model: normalizing definitions from `StartRequest` (checked with
//! [`super::validate`]), and turning records into the messages clients read. Every rejection
//! names the field.

use std::collections::HashSet;

use tonic::Status;

use super::validate::{
    check_endpoint, check_kinds, check_ms, check_name, echo, invalid, too_large, ItemField, Limits,
};
use crate::model::{
    BranchDef, BranchRecord, Definition, EventKind, EventRecord, ParticipantRecord, RetryPolicy,
    SagaDef, StepDef, StepKind, StepStatus, Target, TwoPhaseDef, TxKind, TxRecord, TxState,
};
use crate::proto;

fn retry_policy(
    item: ItemField,
    given: Option<&proto::RetryPolicy>,
    default: &RetryPolicy,
    limits: &Limits,
) -> Result<RetryPolicy, Status> {
    let Some(given) = given else {
        return Ok(*default);
    };
    // Bounded so that a retry comes within a sensible time, not in a thousand years.
    check_ms(
        item.at("retry.initial_backoff_ms"),
        given.initial_backoff_ms,
        limits.max_backoff_ms,
    )?;
    check_ms(
        item.at("retry.max_backoff_ms"),
        given.max_backoff_ms,
        limits.max_backoff_ms,
    )?;
    if given.max_attempts > limits.max_attempts {
        return Err(too_large(
            item.at("retry.max_attempts"),
            format!(
                "{} exceeds the limit of {}",
                given.max_attempts, limits.max_attempts
            ),
        ));
    }
    let max_attempts = if given.max_attempts == 0 {
        default.max_attempts
    } else {
        given.max_attempts
    };
    let initial = if given.initial_backoff_ms == 0 {
        default.initial_backoff_ms
    } else {
        given.initial_backoff_ms
    };
    let max = if given.max_backoff_ms == 0 {
        default.max_backoff_ms.max(initial)
    } else {
        given.max_backoff_ms
    };
    if max < initial {
        return Err(invalid(
            item.at("retry.max_backoff_ms"),
            format!("{max} is below initial_backoff_ms {initial}"),
        ));
    }
    Ok(RetryPolicy {
        max_attempts,
        initial_backoff_ms: initial,
        max_backoff_ms: max,
    })
}

fn target(
    field: ItemField,
    service: &str,
    endpoint: &str,
    limits: &Limits,
) -> Result<Target, Status> {
    match (service.is_empty(), endpoint.is_empty()) {
        (true, true) => Err(invalid(field, "give a service or an endpoint")),
        (false, false) => Err(invalid(
            field,
            "give either a service or an endpoint, not both",
        )),
        (false, true) => {
            check_name(field.at("service"), service, limits)?;
            Ok(Target::Service(service.to_string()))
        }
        (true, false) => {
            check_endpoint(field.at("endpoint"), endpoint, limits)?;
            Ok(Target::Endpoint(endpoint.to_string()))
        }
    }
}

/// The saga as the engine expects it: defaults filled in, structure checked.
///
/// Rules beyond the per-field ones: stages do not decrease along the steps; at most one pivot,
/// alone in its stage and without a compensation; every step after the pivot is retriable, and
/// retriable steps come only after a pivot.
pub fn saga(
    given: &proto::Saga,
    default_timeout_ms: u64,
    default_retry: &RetryPolicy,
    limits: &Limits,
) -> Result<SagaDef, Status> {
    if given.steps.is_empty() {
        return Err(invalid("saga.steps", "a saga needs at least one step"));
    }
    if given.steps.len() > limits.max_steps {
        return Err(too_large(
            "saga.steps",
            format!(
                "{} steps exceed the limit of {}",
                given.steps.len(),
                limits.max_steps
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut steps = Vec::with_capacity(given.steps.len());
    for (i, s) in given.steps.iter().enumerate() {
        let field = ItemField::item("saga.steps", i);
        check_name(field.at("name"), &s.name, limits)?;
        if !names.insert(s.name.as_str()) {
            return Err(invalid(
                field.at("name"),
                format!("duplicate step name {}", echo(&s.name)),
            ));
        }
        let target = target(field, &s.service, &s.endpoint, limits)?;
        check_name(field.at("action"), &s.action, limits)?;
        let compensate = if s.compensate.is_empty() {
            None
        } else {
            check_name(field.at("compensate"), &s.compensate, limits)?;
            Some(s.compensate.clone())
        };
        if s.payload.len() > limits.max_payload_bytes {
            return Err(too_large(
                field.at("payload"),
                format!(
                    "{} bytes exceed the limit of {}",
                    s.payload.len(),
                    limits.max_payload_bytes
                ),
            ));
        }
        let kind = match proto::StepKind::try_from(s.kind) {
            Ok(proto::StepKind::Unspecified | proto::StepKind::Compensatable) => {
                StepKind::Compensatable
            }
            Ok(proto::StepKind::Pivot) => StepKind::Pivot,
            Ok(proto::StepKind::Retriable) => StepKind::Retriable,
            Err(_) => {
                return Err(invalid(
                    field.at("kind"),
                    format!("unknown step kind {}", s.kind),
                ))
            }
        };
        if s.timeout_ms > limits.max_call_timeout_ms {
            return Err(invalid(
                field.at("timeout_ms"),
                format!(
                    "{} exceeds the limit of {}",
                    s.timeout_ms, limits.max_call_timeout_ms
                ),
            ));
        }
        if let Some(prev) = steps.last().map(|p: &StepDef| p.stage) {
            if s.stage < prev {
                return Err(invalid(
                    field.at("stage"),
                    format!("stage {} comes after stage {prev}; stages must not decrease along the steps", s.stage),
                ));
            }
        }
        steps.push(StepDef {
            name: s.name.clone(),
            target,
            action: s.action.clone(),
            compensate,
            payload: s.payload.clone(),
            kind,
            stage: s.stage,
            timeout_ms: if s.timeout_ms == 0 {
                default_timeout_ms
            } else {
                s.timeout_ms
            },
            retry: retry_policy(field, s.retry.as_ref(), default_retry, limits)?,
        });
    }
    check_kinds(&steps)?;
    Ok(SagaDef { steps })
}

/// The two-phase commit as the engine expects it: defaults filled in, fields checked.
pub fn two_phase(
    given: &proto::TwoPhase,
    default_timeout_ms: u64,
    default_retry: &RetryPolicy,
    limits: &Limits,
) -> Result<TwoPhaseDef, Status> {
    if given.branches.is_empty() {
        return Err(invalid(
            "two_phase.branches",
            "a two-phase commit needs at least one branch",
        ));
    }
    if given.branches.len() > limits.max_steps {
        return Err(too_large(
            "two_phase.branches",
            format!(
                "{} branches exceed the limit of {}",
                given.branches.len(),
                limits.max_steps
            ),
        ));
    }
    if given.prepare_timeout_ms > limits.max_call_timeout_ms {
        return Err(invalid(
            "two_phase.prepare_timeout_ms",
            format!(
                "{} exceeds the limit of {}",
                given.prepare_timeout_ms, limits.max_call_timeout_ms
            ),
        ));
    }
    let mut names = HashSet::new();
    let mut branches = Vec::with_capacity(given.branches.len());
    for (i, b) in given.branches.iter().enumerate() {
        let field = ItemField::item("two_phase.branches", i);
        check_name(field.at("name"), &b.name, limits)?;
        if !names.insert(b.name.as_str()) {
            return Err(invalid(
                field.at("name"),
                format!("duplicate branch name {}", echo(&b.name)),
            ));
        }
        let target = target(field, &b.service, &b.endpoint, limits)?;
        check_name(field.at("action"), &b.action, limits)?;
        if b.payload.len() > limits.max_payload_bytes {
            return Err(too_large(
                field.at("payload"),
                format!(
                    "{} bytes exceed the limit of {}",
                    b.payload.len(),
                    limits.max_payload_bytes
                ),
            ));
        }
        if b.timeout_ms > limits.max_call_timeout_ms {
            return Err(invalid(
                field.at("timeout_ms"),
                format!(
                    "{} exceeds the limit of {}",
                    b.timeout_ms, limits.max_call_timeout_ms
                ),
            ));
        }
        branches.push(BranchDef {
            name: b.name.clone(),
            target,
            action: b.action.clone(),
            payload: b.payload.clone(),
            timeout_ms: if b.timeout_ms == 0 {
                default_timeout_ms
            } else {
                b.timeout_ms
            },
            retry: retry_policy(field, b.retry.as_ref(), default_retry, limits)?,
        });
    }
    Ok(TwoPhaseDef {
        branches,
        // The prepare phase gets the branches' own timeouts and retries unless told otherwise.
        prepare_timeout_ms: if given.prepare_timeout_ms == 0 {
            default_timeout_ms.saturating_mul(3)
        } else {
            given.prepare_timeout_ms
        },
    })
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

fn kind_proto(kind: TxKind) -> proto::TxKind {
    match kind {
        TxKind::Saga => proto::TxKind::Saga,
        TxKind::TwoPhase => proto::TxKind::TwoPhase,
    }
}

/// The wire form of a state.
pub fn state_proto(state: TxState) -> proto::TxState {
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

/// The model state of a wire state, if it names one.
pub fn state_model(state: i32) -> Option<TxState> {
    Some(match proto::TxState::try_from(state).ok()? {
        proto::TxState::Unspecified => return None,
        proto::TxState::Running => TxState::Running,
        proto::TxState::Compensating => TxState::Compensating,
        proto::TxState::Committed => TxState::Committed,
        proto::TxState::Compensated => TxState::Compensated,
        proto::TxState::Failed => TxState::Failed,
        proto::TxState::Preparing => TxState::Preparing,
        proto::TxState::Committing => TxState::Committing,
        proto::TxState::Aborting => TxState::Aborting,
        proto::TxState::Aborted => TxState::Aborted,
    })
}

fn step_kind_proto(kind: StepKind) -> proto::StepKind {
    match kind {
        StepKind::Compensatable => proto::StepKind::Compensatable,
        StepKind::Pivot => proto::StepKind::Pivot,
        StepKind::Retriable => proto::StepKind::Retriable,
    }
}

fn branch_proto(def: &Definition, b: &BranchRecord) -> proto::Branch {
    let mut out = proto::Branch {
        index: b.index,
        name: b.name.clone(),
        state: b.status.as_str().to_string(),
        attempts: b.attempts,
        output: b.output.clone().unwrap_or_default(),
        last_error: b.last_error.clone().unwrap_or_default(),
        ..Default::default()
    };
    match def {
        Definition::Saga(saga) => {
            if let Some(step) = saga.steps.get(b.index as usize) {
                out.stage = step.stage;
                out.kind = step_kind_proto(step.kind) as i32;
                out.target = step.target.to_string();
                out.action = step.action.clone();
                out.compensate = step.compensate.clone().unwrap_or_default();
            }
        }
        Definition::TwoPhase(tp) => {
            if let Some(branch) = tp.branches.get(b.index as usize) {
                out.target = branch.target.to_string();
                out.action = branch.action.clone();
            }
        }
    }
    out
}

/// The wire form of a transaction (with branches if the record has them).
pub fn transaction(tx: &TxRecord) -> proto::Transaction {
    proto::Transaction {
        tx_id: tx.id.to_string(),
        kind: kind_proto(tx.kind) as i32,
        state: state_proto(tx.state) as i32,
        labels: tx.labels.clone().into_iter().collect(),
        idempotency_key: tx.idempotency_key.clone().unwrap_or_default(),
        created_at_ms: ms(tx.created_at),
        updated_at_ms: ms(tx.updated_at),
        deadline_at_ms: tx.deadline_at.map(ms).unwrap_or(0),
        last_error: tx.last_error.clone().unwrap_or_default(),
        branches: tx
            .branches
            .iter()
            .map(|b| branch_proto(&tx.definition, b))
            .collect(),
        owner: tx.owner.clone().unwrap_or_default(),
        epoch: tx.epoch.max(0) as u64,
        in_doubt: in_doubt(tx),
    }
}

/// A 2PC in phase two with a branch whose last call failed: decided, not yet acknowledged.
pub fn in_doubt(tx: &TxRecord) -> bool {
    matches!(tx.state, TxState::Committing | TxState::Aborting)
        && tx.branches.iter().any(|b| {
            matches!(
                b.status,
                StepStatus::CommitBackoff | StepStatus::AbortBackoff
            ) || (b.last_error.is_some()
                && !matches!(b.status, StepStatus::Committed | StepStatus::Aborted))
        })
}

/// The wire form of a history entry.
pub fn event(e: &EventRecord) -> proto::TxEvent {
    proto::TxEvent {
        tx_id: e.tx_id.to_string(),
        seq: e.seq,
        at_ms: ms(e.at),
        kind: e.kind.as_str().to_string(),
        branch: e.branch.map(|b| b as i32).unwrap_or(-1),
        detail: e.detail.clone(),
    }
}

/// The wire form of a registration.
pub fn participant(p: &ParticipantRecord) -> proto::ParticipantEndpoint {
    proto::ParticipantEndpoint {
        service: p.service.clone(),
        endpoint: p.endpoint.clone(),
        weight: p.weight,
        zone: p.zone.clone(),
        expires_at_ms: p.expires_at.map(ms).unwrap_or(0),
        // Live balancing state: only ListParticipants fills it in (see [`live_participant`]).
        policy: String::new(),
        outstanding: 0,
        ejected_until_ms: 0,
    }
}

/// The wire form of an endpoint with this coordinator's balancing state for it: the service's
/// policy, the calls in flight to it, and its ejection.
pub fn live_participant(
    p: &ParticipantRecord,
    policy: &crate::registry::Policy,
    state: &crate::registry::EndpointState,
) -> proto::ParticipantEndpoint {
    proto::ParticipantEndpoint {
        policy: policy.to_string(),
        outstanding: state.outstanding,
        ejected_until_ms: state
            .ejected_until
            .map(|t| ms(chrono::DateTime::<chrono::Utc>::from(t)))
            .unwrap_or(0),
        ..participant(p)
    }
}

/// Whether this history entry is the transaction coming to rest.
pub fn is_outcome_event(e: &EventRecord) -> bool {
    e.branch.is_none()
        && matches!(
            e.kind,
            EventKind::Committed | EventKind::Compensated | EventKind::Failed | EventKind::Aborted
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str) -> proto::SagaStep {
        proto::SagaStep {
            name: name.into(),
            service: "svc".into(),
            action: "do".into(),
            compensate: "undo".into(),
            ..Default::default()
        }
    }

    fn check(steps: Vec<proto::SagaStep>) -> Result<SagaDef, Status> {
        saga(
            &proto::Saga { steps },
            1000,
            &RetryPolicy::default(),
            &Limits::default(),
        )
    }

    #[test]
    fn defaults_are_filled_in() {
        let def = check(vec![step("a")]).unwrap();
        assert_eq!(def.steps[0].timeout_ms, 1000);
        assert_eq!(def.steps[0].retry, RetryPolicy::default());
        assert_eq!(def.steps[0].kind, StepKind::Compensatable);
    }

    #[test]
    fn bad_definitions_name_the_field() {
        let cases: Vec<(Vec<proto::SagaStep>, &str)> = vec![
            (vec![], "saga.steps: a saga needs"),
            (vec![step("a"), step("a")], "saga.steps[1].name: duplicate"),
            (
                vec![proto::SagaStep {
                    service: String::new(),
                    ..step("a")
                }],
                "saga.steps[0]: give a service or an endpoint",
            ),
            (
                vec![proto::SagaStep {
                    endpoint: "http://127.0.0.1:1".into(),
                    ..step("a")
                }],
                "not both",
            ),
            (
                vec![proto::SagaStep {
                    action: String::new(),
                    ..step("a")
                }],
                "saga.steps[0].action: must not be empty",
            ),
            (
                vec![
                    proto::SagaStep {
                        stage: 2,
                        ..step("a")
                    },
                    proto::SagaStep {
                        stage: 1,
                        ..step("b")
                    },
                ],
                "saga.steps[1].stage",
            ),
            (
                vec![proto::SagaStep {
                    kind: proto::StepKind::Retriable as i32,
                    ..step("a")
                }],
                "saga.steps[0].kind: a retriable step must come after a pivot",
            ),
            (
                vec![proto::SagaStep {
                    kind: proto::StepKind::Pivot as i32,
                    ..step("a")
                }],
                "saga.steps[0].compensate: a pivot step has no compensation",
            ),
            (
                vec![
                    proto::SagaStep {
                        kind: proto::StepKind::Pivot as i32,
                        compensate: String::new(),
                        stage: 0,
                        ..step("a")
                    },
                    proto::SagaStep {
                        stage: 1,
                        ..step("b")
                    },
                ],
                "saga.steps[1].kind: steps after the pivot must be retriable",
            ),
        ];
        for (steps, want) in cases {
            let err = check(steps).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{want}");
            assert!(
                err.message().contains(want),
                "{:?} lacks {want:?}",
                err.message()
            );
        }
    }

    #[test]
    fn control_characters_are_refused_in_every_string_field() {
        let cases: Vec<(proto::SagaStep, &str)> = vec![
            (
                step("a\0b"),
                "saga.steps[0].name: must not contain control characters (U+0000 at byte 1)",
            ),
            (
                proto::SagaStep {
                    action: "do\u{7}".into(),
                    ..step("a")
                },
                "saga.steps[0].action: must not contain control characters (U+0007",
            ),
            (
                proto::SagaStep {
                    compensate: "\nundo".into(),
                    ..step("a")
                },
                "saga.steps[0].compensate: must not contain control characters (U+000A",
            ),
            (
                proto::SagaStep {
                    service: "s\u{9b}vc".into(),
                    ..step("a")
                },
                "saga.steps[0].service: must not contain control characters (U+009B",
            ),
            (
                proto::SagaStep {
                    service: String::new(),
                    endpoint: "http://127.0.0.1:1\0".into(),
                    ..step("a")
                },
                "saga.steps[0].endpoint: must not contain spaces, control",
            ),
        ];
        for (s, want) in cases {
            let err = check(vec![s]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{want}");
            assert!(err.message().starts_with(want), "{:?}", err.message());
        }
        let tp = proto::TwoPhase {
            branches: vec![proto::TwoPhaseBranch {
                name: "b".into(),
                service: "svc".into(),
                action: "pay\0".into(),
                ..Default::default()
            }],
            prepare_timeout_ms: 0,
        };
        let err = two_phase(&tp, 1000, &RetryPolicy::default(), &Limits::default()).unwrap_err();
        assert!(
            err.message()
                .starts_with("two_phase.branches[0].action: must not contain control characters"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn bad_ports_and_backoffs_are_refused() {
        for endpoint in [
            "http://127.0.0.1:99999",
            "http://127.0.0.1:-1",
            "http://u@h:1",
        ] {
            let err = check(vec![proto::SagaStep {
                service: String::new(),
                endpoint: endpoint.into(),
                ..step("a")
            }])
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{endpoint}");
            assert!(
                err.message().starts_with("saga.steps[0].endpoint: "),
                "{}",
                err.message()
            );
        }
        let err = check(vec![proto::SagaStep {
            retry: Some(proto::RetryPolicy {
                initial_backoff_ms: u64::MAX,
                ..Default::default()
            }),
            ..step("a")
        }])
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().starts_with(
                "saga.steps[0].retry.initial_backoff_ms: 18446744073709551615 exceeds"
            ),
            "{}",
            err.message()
        );
    }

    #[test]
    fn echoed_names_are_cut_short() {
        let big: Vec<proto::SagaStep> = vec![step(&"x".repeat(200)), step(&"x".repeat(200))];
        let err = check(big).unwrap_err();
        assert!(err.message().len() < 200, "{}", err.message());
        assert!(err.message().ends_with("…"), "{}", err.message());
    }

    #[test]
    fn limits_are_resource_exhausted() {
        let big = proto::SagaStep {
            payload: vec![0; (1 << 20) + 1],
            ..step("a")
        };
        let err = check(vec![big]).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err
            .message()
            .starts_with("saga.steps[0].payload: 1048577 bytes exceed"));
        let many: Vec<_> = (0..101).map(|i| step(&format!("s{i}"))).collect();
        let err = check(many).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err
            .message()
            .starts_with("saga.steps: 101 steps exceed the limit of 100"));
    }
}
