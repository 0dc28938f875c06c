"""Hooks of .ci/schemathesis.sh (named in .ci/schemathesis.toml).

JSON Schema describes one value at a time; the few rules of the server that compare two values
of one body are applied here, and bodies that break them are left out rather than expected to
be accepted. Each rule is the server's own (model/src/validate.rs), written the same way.
"""

import re

import schemathesis
import yaml


def _normalize_template(template):
    # `normalize_template`: /orders/{id} and /orders/{orderId} are the same route.
    out = []
    for segment in template.split("/"):
        if segment.startswith("{*"):
            out.append("{*}")
        elif segment.startswith("{"):
            out.append("{}")
        else:
            out.append(segment)
    return "/".join(out)


def _operations_clash(operations):
    # `check_api`: operation names are unique, and so are (method, route) pairs;
    # `parse_url_template`: a template names each parameter once.
    names, routes = set(), set()
    for op in operations:
        if not isinstance(op, dict):
            continue
        name, method, template = op.get("name"), op.get("method"), op.get("url-template")
        if name in names:
            return True
        names.add(name)
        if isinstance(method, str) and isinstance(template, str):
            route = (method.upper(), _normalize_template(template))
            if route in routes:
                return True
            routes.add(route)
            params = re.findall(r"\{\*?([^{}]*)\}", template)
            if len(params) != len(set(params)):
                return True
    return False


def _breaks_a_rule(value):
    if isinstance(value, list):
        return any(_breaks_a_rule(item) for item in value)
    if not isinstance(value, dict):
        return False
    # `check_subscription`: a subscription's two keys differ.
    primary = value.get("primary-key")
    if isinstance(primary, str) and primary and primary == value.get("secondary-key"):
        return True
    # `check_pool`: a pool lists each member URL once (a trailing `/` aside); JSON Schema's
    # uniqueItems compares whole members, weights included.
    members = value.get("members")
    if isinstance(members, list):
        urls = [m.get("url").rstrip("/") for m in members if isinstance(m, dict) and isinstance(m.get("url"), str)]
        if len(urls) != len(set(urls)):
            return True
    operations = value.get("operations")
    if isinstance(operations, list) and _operations_clash(operations):
        return True
    # `validate-headers` / `validate-parameters`: a header or parameter is checked against a
    # pattern or a list of values, at most one of the two.
    if value.get("pattern") is not None and value.get("values") is not None:
        return True
    # `Document::read`: within one file (and one list), a name is given once per kind.
    for items in value.values():
        if _names_repeat(items):
            return True
    return any(_breaks_a_rule(item) for item in value.values())


def _names_repeat(items):
    if not isinstance(items, list):
        return False
    names = [i.get("name") for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]
    return len(names) != len(set(names))


@schemathesis.hook
def filter_body(ctx, body):
    return not _breaks_a_rule(body)


class _QuotedStrings(yaml.SafeDumper):
    """PyYAML writes YAML 1.1, whose plain scalars a YAML 1.2 reader (the server's) types
    differently: `1e3` and `0o7` are strings to the first and numbers to the second, `y` and
    `n` the other way round. Quoting every string leaves no such doubt."""


_QuotedStrings.add_representer(
    str, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style='"')
)


@schemathesis.serializer("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
def yaml_serializer(ctx, value):
    if isinstance(value, bytes):
        return value
    return yaml.dump(value, Dumper=_QuotedStrings)
