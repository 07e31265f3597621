"""Values of the string-typed status and kind columns (mirroring the proto enums, lowercase)."""

from __future__ import annotations

from enum import StrEnum


class ContractStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


class TaskKind(StrEnum):
    SUPERVISOR = "supervisor"
    WORKER = "worker"


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


class TaskEventKind(StrEnum):
    OUTPUT = "output"
    TOOL_CALL = "tool_call"
    TOOL_RESULT = "tool_result"
    STATUS = "status"
    ERROR = "error"


class CheckpointKind(StrEnum):
    MANUAL = "manual"
    SAFETY = "safety"
    CONTINUATION = "continuation"
    REWIND = "rewind"
    DAEMON = "daemon"
    INITIAL = "initial"


class WorktreePlacement(StrEnum):
    SERVICE = "service"
    DAEMON = "daemon"


class SnapshotReason(StrEnum):
    CHECKPOINT = "checkpoint"
    REWIND = "rewind"
    RESTART_PHASE = "restart_phase"
    RESTORE = "restore"


class TimelineKind(StrEnum):
    CONTRACT_CREATED = "contract_created"
    PHASE_ADVANCED = "phase_advanced"
    TASK_CREATED = "task_created"
    TASK_STATUS_CHANGED = "task_status_changed"
    SUPERVISOR_STARTED = "supervisor_started"
    SUPERVISOR_RESUMED = "supervisor_resumed"
    TASK_RESUMED = "task_resumed"
    MESSAGES_APPENDED = "messages_appended"
    TASK_EVENTS_RECORDED = "task_events_recorded"
    CHECKPOINT_CREATED = "checkpoint_created"
    TASK_REWOUND = "task_rewound"
    CONVERSATION_REWOUND = "conversation_rewound"
    CONVERSATION_RESTORED = "conversation_restored"
    BRANCH_CREATED = "branch_created"
    TASK_FORKED = "task_forked"
    TASK_CONTINUED = "task_continued"
    DAEMON_REGISTERED = "daemon_registered"
