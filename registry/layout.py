"""ZooKeeper paths, relative to the configured root (the client is chrooted to it).

| path                                      | kind       | written by |
|-------------------------------------------|------------|------------|
| /workers/<worker_id>                      | ephemeral  | worker     |
| /gateways/<gateway_id>                    | ephemeral  | gateway    |
| /models/<model>                           | persistent | manager    |
| /models/<model>/versions/<v>              | persistent | manager    |
| /assignments/<worker_id>/<model>@<v>      | persistent | manager    |
| /routes/<model>/<v>/<worker_id>           | ephemeral  | worker     |
| /services/<name>                          | persistent | manager    |
| /plugins/<name>/<version>                 | persistent | manager    |
| /groups/<group>                           | persistent | manager    |
| /scale/<model>                            | persistent | manager    |
| /wake/<model>                             | persistent | gateway    |
| /manager/leader                           | election   | manager    |
"""

from __future__ import annotations

import re

from registry.errors import InvalidArgumentError

DEFAULT_ROOT = "/modelgate"

#: Names of models, groups, services and plugins (also used as path segments).
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
_NAME = re.compile(NAME_PATTERN)
#: Worker and gateway ids default to "host:port", so they may also hold ':' and upper case.
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

WORKERS = "/workers"
GATEWAYS = "/gateways"
MODELS = "/models"
ASSIGNMENTS = "/assignments"
ROUTES = "/routes"
SERVICES = "/services"
PLUGINS = "/plugins"
GROUPS = "/groups"
SCALE = "/scale"
WAKE = "/wake"
MANAGER_LEADER = "/manager/leader"

#: The top-level folders every role may expect to exist.
TOP_LEVEL = (WORKERS, GATEWAYS, MODELS, ASSIGNMENTS, ROUTES, SERVICES, PLUGINS, GROUPS, SCALE, WAKE)


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid model/group/service/plugin name, else raise."""
    if not _NAME.match(name):
        raise InvalidArgumentError(
            f"invalid {kind} name {name!r}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def check_node_id(kind: str, node_id: str) -> str:
    """Return ``node_id`` if it is a valid worker/gateway id, else raise."""
    if not _NODE_ID.match(node_id):
        raise InvalidArgumentError(
            f"invalid {kind} id {node_id!r}: use 1-128 characters of A-Z, a-z, 0-9, '.', '_', "
            "':', '-'"
        )
    return node_id


def check_version(version: int) -> int:
    """Return ``version`` if it is a valid model version (a positive integer), else raise."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgumentError(f"invalid model version {version!r}: use an integer >= 1")
    return version


def worker(worker_id: str) -> str:
    return f"{WORKERS}/{check_node_id('worker', worker_id)}"


def gateway(gateway_id: str) -> str:
    return f"{GATEWAYS}/{check_node_id('gateway', gateway_id)}"


def model(name: str) -> str:
    return f"{MODELS}/{check_name('model', name)}"


def versions(model_name: str) -> str:
    return f"{model(model_name)}/versions"


def version(model_name: str, v: int) -> str:
    return f"{versions(model_name)}/{check_version(v)}"


def assignments(worker_id: str) -> str:
    return f"{ASSIGNMENTS}/{check_node_id('worker', worker_id)}"


def assignment_key(model_name: str, v: int) -> str:
    """The node name of an assignment: ``<model>@<version>``."""
    return f"{check_name('model', model_name)}@{check_version(v)}"


def parse_assignment_key(key: str) -> tuple[str, int]:
    """Split ``<model>@<version>`` back into its parts."""
    name, sep, v = key.rpartition("@")
    if not sep or not v.isdigit():
        raise InvalidArgumentError(f"invalid assignment key {key!r}: expected <model>@<version>")
    return check_name("model", name), check_version(int(v))


def assignment(worker_id: str, model_name: str, v: int) -> str:
    return f"{assignments(worker_id)}/{assignment_key(model_name, v)}"


def model_routes(model_name: str) -> str:
    return f"{ROUTES}/{check_name('model', model_name)}"


def version_routes(model_name: str, v: int) -> str:
    return f"{model_routes(model_name)}/{check_version(v)}"


def route(model_name: str, v: int, worker_id: str) -> str:
    return f"{version_routes(model_name, v)}/{check_node_id('worker', worker_id)}"


def service(name: str) -> str:
    return f"{SERVICES}/{check_name('service', name)}"


def plugin_versions(name: str) -> str:
    return f"{PLUGINS}/{check_name('plugin', name)}"


def plugin(name: str, plugin_version: str) -> str:
    return f"{plugin_versions(name)}/{check_name('plugin version', plugin_version)}"


def group(name: str) -> str:
    return f"{GROUPS}/{check_name('group', name)}"


def scale(model_name: str) -> str:
    return f"{SCALE}/{check_name('model', model_name)}"


def wake(model_name: str) -> str:
    return f"{WAKE}/{check_name('model', model_name)}"
