"""Broker security: the CA and TLS certificates, per-device broker identities and ACL roles
(mosquitto dynamic security), agent enrollment bundles, and where their files live."""

from edgefleet.controller.security.bundle import AgentBundle, parse_labels, write_agent_bundle
from edgefleet.controller.security.dynsec import DynsecAdmin, write_bootstrap_config
from edgefleet.controller.security.endpoint import BrokerCredentials, BrokerEndpoint
from edgefleet.controller.security.errors import (
    BrokerAdminError,
    BrokerAuthError,
    BrokerUnreachableError,
    CaNotFoundError,
    CredentialsFileError,
    DeviceAlreadyEnrolledError,
    DynsecCommandError,
    PkiError,
    SecurityError,
    UnknownDeviceError,
    WouldOverwriteError,
)
from edgefleet.controller.security.identities import (
    ADMIN_USERNAME,
    CONTROLLER_USERNAME,
    BrokerIdentities,
    DeviceIdentity,
    groups_for,
)
from edgefleet.controller.security.paths import SecurityPaths, default_paths
from edgefleet.controller.security.pki import init_pki, issue_client_certificate, load_ca
from edgefleet.controller.security.signing_key import ensure_signing_key

__all__ = [
    "ADMIN_USERNAME",
    "CONTROLLER_USERNAME",
    "AgentBundle",
    "BrokerAdminError",
    "BrokerAuthError",
    "BrokerCredentials",
    "BrokerEndpoint",
    "BrokerIdentities",
    "BrokerUnreachableError",
    "CaNotFoundError",
    "CredentialsFileError",
    "DeviceAlreadyEnrolledError",
    "DeviceIdentity",
    "DynsecAdmin",
    "DynsecCommandError",
    "PkiError",
    "SecurityError",
    "SecurityPaths",
    "UnknownDeviceError",
    "WouldOverwriteError",
    "default_paths",
    "ensure_signing_key",
    "groups_for",
    "init_pki",
    "issue_client_certificate",
    "load_ca",
    "parse_labels",
    "write_agent_bundle",
    "write_bootstrap_config",
]
