"""Guard components (see base.py for their shape). A new guard is a new file here and one line below; the
compiler, the API process and the engine worker run whatever is registered, in this order."""

from guard_service.guards.base import GuardComponent
from guard_service.guards.described import DescribedDetector
from guard_service.guards.evidence import EvidenceDetector
from guard_service.guards.knowledge import KnowledgeDetector
from guard_service.guards.leak import LeakDetector
from guard_service.guards.names import NameDetector
from guard_service.guards.provenance import ProvenanceVeto
from guard_service.guards.semantic import SemanticDetector
from guard_service.guards.semantic_penalty import SemanticPenalty
from guard_service.guards.token_ban import TokenBan
from guard_service.guards.unknown_name import UnknownNameEvidence

COMPONENTS: tuple[GuardComponent, ...] = (
    NameDetector(),
    SemanticDetector(),
    DescribedDetector(),
    EvidenceDetector(),
    UnknownNameEvidence(),
    KnowledgeDetector(),
    TokenBan(),
    SemanticPenalty(),
    ProvenanceVeto(),
    LeakDetector(),
)
