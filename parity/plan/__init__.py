"""Stage 2, plan: the cases of a job, with everything known before anything renders.

:mod:`parity.plan.sides` (each side's RenderSettings for a sample),
:mod:`parity.plan.requests` (the requests a user sent, bound and paired with previews) and
:mod:`parity.plan.cases` (one Case per preview).
"""

from parity.plan.cases import (
    Case,
    Steps,
    check_requests_in_steps,
    describe_cases,
    parse_steps,
    plan_cases,
    select_steps,
    step_of_each,
    step_of_requests,
    steps_with_requests,
    unreadable_image,
)
from parity.plan.requests import (
    MATCHES,
    SERVED_EXTS,
    Match,
    PromptRef,
    RequestPlan,
    UserRequest,
    bind_request,
    bind_requests,
    check_served_pairs,
    default_lora_root,
    match_request,
    plan_requests,
    resolve_lora_path,
)

__all__ = [
    "MATCHES",
    "SERVED_EXTS",
    "Case",
    "Match",
    "PromptRef",
    "RequestPlan",
    "Steps",
    "UserRequest",
    "bind_request",
    "bind_requests",
    "check_requests_in_steps",
    "check_served_pairs",
    "default_lora_root",
    "describe_cases",
    "match_request",
    "parse_steps",
    "plan_cases",
    "plan_requests",
    "resolve_lora_path",
    "select_steps",
    "step_of_each",
    "step_of_requests",
    "steps_with_requests",
    "unreadable_image",
]
