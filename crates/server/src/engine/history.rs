//! Folding a transaction's history by the calls its events are about ([`EventKind::call`]).

use crate::model::{CallMark, EventKind};

/// Drops each call's `sent` event that a later event of the same branch answers (`ok`, `failed`
/// or `error` of the same phase), keeping everything else in order. `call_of` gives an event's
/// kind and branch. The answer names the attempt, so the history loses only the time the call
/// left; a `sent` event stays for a call still in flight, which is when an operator needs it.
pub fn drop_answered_sends<E>(
    events: impl IntoIterator<Item = E>,
    call_of: impl Fn(&E) -> (EventKind, Option<u32>),
) -> Vec<E> {
    let mut kept: Vec<E> = Vec::new();
    for event in events {
        let (kind, branch) = call_of(&event);
        if let (Some(phase), Some(branch)) = (answered_phase(kind), branch) {
            // The latest kept event of this call, if it is the send this answers.
            let call = kept.iter().rposition(|e| {
                let (kind, b) = call_of(e);
                b == Some(branch) && kind.call().is_some_and(|(p, _)| p == phase)
            });
            if let Some(at) =
                call.filter(|&at| matches!(call_of(&kept[at]).0.call(), Some((_, CallMark::Sent))))
            {
                kept.remove(at);
            }
        }
        kept.push(event);
    }
    kept
}

/// The call phase an event answers (`Execute` for `execute_ok`), if it is a call's answer.
fn answered_phase(kind: EventKind) -> Option<crate::model::Phase> {
    match kind.call()? {
        (phase, CallMark::Ok | CallMark::Failed | CallMark::Error) => Some(phase),
        (_, CallMark::Sent | CallMark::Skipped) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::*;

    fn fold(events: &[(EventKind, Option<u32>)]) -> Vec<(EventKind, Option<u32>)> {
        drop_answered_sends(events.iter().copied(), |&e| e)
    }

    #[test]
    fn an_answered_call_keeps_only_its_answer() {
        let folded = fold(&[
            (ExecuteSent, Some(0)),
            (ExecuteOk, Some(0)),
            (ExecuteSent, Some(1)),
            (ExecuteError, Some(1)),
            (ExecuteSent, Some(1)),
            (ExecuteSent, Some(2)),
            (ExecuteOk, Some(1)),
        ]);
        assert_eq!(
            folded,
            [
                (ExecuteOk, Some(0)),
                (ExecuteError, Some(1)),
                (ExecuteSent, Some(2)),
                (ExecuteOk, Some(1)),
            ]
        );
    }

    #[test]
    fn only_the_same_phase_and_branch_answer_a_send() {
        let events = [
            (PrepareSent, Some(0)),
            (CommitOk, Some(0)),
            (CompensateSent, Some(1)),
            (ExecuteFailed, Some(1)),
            (CommitSent, None),
            (CommitOk, None),
            (Committed, None),
        ];
        assert_eq!(fold(&events), events);
    }

    #[test]
    fn a_skipped_call_answers_nothing() {
        let events = [(AbortSent, Some(0)), (AbortSkipped, Some(0))];
        assert_eq!(fold(&events), events);
    }
}
