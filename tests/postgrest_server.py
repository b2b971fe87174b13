"""A small server of the PostgREST protocol (read side), backed by a real PostgreSQL.

It serves ``GET /rest/v1/<table>`` the way PostgREST (v12, as run by Supabase) does for the
queries callbridge's Supabase backend makes, so that the real ``supabase`` client can be tested
without a Supabase project. Query parameters are translated into one SQL statement that builds the
JSON response inside PostgreSQL, as PostgREST itself does:

* ``select=`` with columns, ``*``, ``alias:column``, and embedded resources ``rel(...)`` to any
  depth, resolved through foreign keys read from the catalog: many-to-one and one-to-one
  (the referencing columns are unique) embed an object or null, one-to-many an array;
* horizontal filters ``col=op.value`` with ``eq neq gt gte lt lte like ilike is in`` and ``not.``;
* ``order=col.asc|desc[.nullsfirst|.nullslast]``, ``limit=``, ``offset=``;
* the ``apikey`` header (as Supabase's gateway requires), ``Accept-Profile`` (schema ``public``);
* errors as PostgREST's JSON body ``{code, message, details, hint}`` with its status codes; an
  unreachable database is 503 ``PGRST000``.

Anything else (embedded filters, hints, RPC, writes) is answered with a 400 naming the feature,
never silently ignored, so a test cannot pass against behaviour this server does not have.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import asyncpg
from aiohttp import web

SCHEMA = "public"
_OPERATORS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "LIKE",
    "ilike": "ILIKE",
}
_RESERVED_PARAMS = {"select", "order", "limit", "offset", "columns", "on_conflict"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "message": message, "details": details, "hint": hint}


def _unsupported(feature: str) -> ApiError:
    return ApiError(400, "PGRST100", f"{feature} is not supported by this test server")


# -- select= parsing -----------------------------------------------------------------------------


@dataclass
class Star:
    pass


@dataclass
class Column:
    name: str
    alias: str | None = None


@dataclass
class Embed:
    relation: str
    alias: str | None
    nodes: list[Star | Column | Embed] = field(default_factory=list)


def parse_select(text: str) -> list[Star | Column | Embed]:
    nodes, rest = _parse_list(text.replace(" ", ""), 0)
    if rest != len(text.replace(" ", "")):
        raise ApiError(400, "PGRST100", f"failed to parse select parameter ({text})")
    return nodes


def _parse_list(text: str, pos: int) -> tuple[list[Star | Column | Embed], int]:
    nodes: list[Star | Column | Embed] = []
    while True:
        start = pos
        while pos < len(text) and text[pos] not in ",()":
            pos += 1
        token = text[start:pos]
        if pos < len(text) and text[pos] == "(":
            alias, _, name = token.rpartition(":")
            if "!" in name or name.startswith("..."):
                raise _unsupported("embedding hints and spreads")
            children, pos = _parse_list(text, pos + 1)
            if pos >= len(text) or text[pos] != ")":
                raise ApiError(400, "PGRST100", "failed to parse select parameter (unbalanced parentheses)")
            pos += 1
            nodes.append(Embed(name, alias or None, children))
        elif token == "*":
            nodes.append(Star())
        elif token:
            if "::" in token or "->" in token:
                raise _unsupported("casts and JSON paths in select")
            alias, _, name = token.rpartition(":")
            nodes.append(Column(name, alias or None))
        else:
            raise ApiError(400, "PGRST100", "failed to parse select parameter (empty item)")
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        return nodes, pos


def parse_in_list(text: str) -> list[str]:
    """``(a,"b,c",d)`` -> [a, "b,c", d], with PostgREST's double-quote and backslash escapes."""
    if not (text.startswith("(") and text.endswith(")")):
        raise ApiError(400, "PGRST100", f"failed to parse filter (in.{text})")
    values: list[str] = []
    body = text[1:-1]
    pos = 0
    while pos <= len(body):
        if pos < len(body) and body[pos] == '"':
            pos += 1
            out = []
            while pos < len(body) and body[pos] != '"':
                if body[pos] == "\\" and pos + 1 < len(body):
                    pos += 1
                out.append(body[pos])
                pos += 1
            values.append("".join(out))
            pos += 1  # closing quote
        else:
            end = body.find(",", pos)
            end = len(body) if end == -1 else end
            values.append(body[pos:end])
            pos = end
        if pos < len(body) and body[pos] != ",":
            raise ApiError(400, "PGRST100", f"failed to parse filter (in.{text})")
        pos += 1
    return values if body else []


# -- catalog -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForeignKey:
    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]


@dataclass
class Catalog:
    columns: dict[str, list[str]]
    foreign_keys: list[ForeignKey]
    unique: dict[str, list[frozenset[str]]]

    @classmethod
    async def load(cls, conn: asyncpg.Connection) -> Catalog:
        columns: dict[str, list[str]] = {}
        for r in await conn.fetch(
            "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'v')"
            " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum",
            SCHEMA,
        ):
            columns.setdefault(r["relname"], []).append(r["attname"])
        keys: list[ForeignKey] = []
        unique: dict[str, list[frozenset[str]]] = {}
        for r in await conn.fetch(
            "SELECT con.contype::text AS contype, c.relname AS tbl, f.relname AS ref,"
            " ARRAY(SELECT attname FROM unnest(con.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a"
            "       ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.i) AS cols,"
            " ARRAY(SELECT attname FROM unnest(con.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a"
            "       ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.i) AS refcols"
            " FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_class f ON f.oid = con.confrelid"
            " WHERE n.nspname = $1 AND con.contype IN ('f', 'p', 'u')",
            SCHEMA,
        ):
            if r["contype"] == "f":
                keys.append(ForeignKey(r["tbl"], tuple(r["cols"]), r["ref"], tuple(r["refcols"])))
            else:
                unique.setdefault(r["tbl"], []).append(frozenset(r["cols"]))
        return cls(columns, keys, unique)

    def check_table(self, table: str) -> list[str]:
        if table not in self.columns:
            raise ApiError(
                404, "PGRST205", f"Could not find the table '{SCHEMA}.{table}' in the schema cache"
            )
        return self.columns[table]

    def check_column(self, table: str, column: str) -> str:
        if column not in self.check_table(table):
            raise ApiError(400, "42703", f"column {table}.{column} does not exist")
        return column

    def relationship(self, table: str, target: str) -> tuple[str, ForeignKey]:
        """("to_one" | "to_many", foreign key) for embedding ``target`` in rows of ``table``."""
        self.check_table(target)
        found: list[tuple[str, ForeignKey]] = []
        for key in self.foreign_keys:
            if key.table == table and key.ref_table == target:
                found.append(("many_to_one", key))
            elif key.table == target and key.ref_table == table:
                unique = frozenset(key.columns) in self.unique.get(target, [])
                found.append(("one_to_one" if unique else "one_to_many", key))
        if not found:
            raise ApiError(
                400,
                "PGRST200",
                f"Could not find a relationship between '{table}' and '{target}' in the schema cache",
            )
        if len(found) > 1:
            raise ApiError(
                300,
                "PGRST201",
                f"Could not embed because more than one relationship was found for '{table}' and '{target}'",
            )
        kind, key = found[0]
        return kind, key


# -- SQL generation ------------------------------------------------------------------------------


def _q(name: str) -> str:
    if not _NAME.match(name):
        raise ApiError(400, "PGRST100", f"invalid identifier {name!r}")
    return f'"{name}"'


def _literal(value: str) -> str:
    # An untyped literal, as PostgREST sends values: PostgreSQL gives it the column's type.
    return "'" + value.replace("'", "''") + "'"


class QueryBuilder:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.aliases = 0

    def _alias(self) -> str:
        self.aliases += 1
        return f"t{self.aliases}"

    def select(
        self,
        table: str,
        nodes: list[Star | Column | Embed],
        where: Iterable[str] = (),
        alias: str | None = None,
        tail: str = "",
    ) -> str:
        self.catalog.check_table(table)
        t = alias or self._alias()
        parts: list[str] = []
        for node in nodes:
            if isinstance(node, Star):
                parts.append(f"{t}.*")
            elif isinstance(node, Column):
                column = self.catalog.check_column(table, node.name)
                parts.append(f"{t}.{_q(column)} AS {_q(node.alias or column)}")
            else:
                parts.append(self._embed(table, t, node))
        conditions = list(where)
        sql = f"SELECT {', '.join(parts) or 'NULL'} FROM {_q(table)} AS {t}"
        if conditions:
            sql += " WHERE " + " AND ".join(conditions)
        return sql + tail

    def _embed(self, table: str, t: str, node: Embed) -> str:
        kind, key = self.catalog.relationship(table, node.relation)
        inner = self._alias()
        if kind == "many_to_one":  # this row's columns reference the target's
            pairs = zip(key.columns, key.ref_columns, strict=True)
            join = [f"{inner}.{_q(ref)} = {t}.{_q(col)}" for col, ref in pairs]
        else:  # the target's columns reference this row's
            pairs = zip(key.columns, key.ref_columns, strict=True)
            join = [f"{inner}.{_q(col)} = {t}.{_q(ref)}" for col, ref in pairs]
        sub = self.select(node.relation, node.nodes, join, alias=inner)
        name = _q(node.alias or node.relation)
        if kind == "one_to_many":
            return f"(SELECT coalesce(json_agg(_e), '[]'::json) FROM ({sub}) AS _e) AS {name}"
        return f"(SELECT row_to_json(_e) FROM ({sub}) AS _e) AS {name}"


def _filter(catalog: Catalog, table: str, t: str, column: str, expression: str) -> str:
    if "." in column:
        raise _unsupported("filters on embedded resources")
    catalog.check_column(table, column)
    negate = False
    if expression.startswith("not."):
        negate, expression = True, expression[4:]
    operator, _, value = expression.partition(".")
    target = f"{t}.{_q(column)}"
    if operator in _OPERATORS:
        if operator in {"like", "ilike"}:
            value = value.replace("*", "%")
        condition = f"{target} {_OPERATORS[operator]} {_literal(value)}"
    elif operator == "in":
        values = parse_in_list(value)
        condition = f"{target} IN ({', '.join(map(_literal, values))})" if values else "false"
    elif operator == "is":
        keyword = {"null": "NULL", "true": "TRUE", "false": "FALSE", "unknown": "UNKNOWN"}.get(value.lower())
        if keyword is None:
            raise ApiError(400, "PGRST100", f"failed to parse filter (is.{value})")
        condition = f"{target} IS {keyword}"
    else:
        raise ApiError(
            400, "PGRST100", f'"failed to parse filter ({operator}.{value})" (operator {operator!r})'
        )
    return f"NOT ({condition})" if negate else condition


def _order(catalog: Catalog, table: str, t: str, text: str) -> str:
    terms = []
    for term in text.split(","):
        column, *modifiers = term.split(".")
        catalog.check_column(table, column)
        sql = f"{t}.{_q(column)}"
        for modifier in modifiers:
            sql += {
                "asc": " ASC",
                "desc": " DESC",
                "nullsfirst": " NULLS FIRST",
                "nullslast": " NULLS LAST",
            }.get(modifier) or ""
            if modifier not in {"asc", "desc", "nullsfirst", "nullslast"}:
                raise ApiError(400, "PGRST100", f"failed to parse order ({term})")
        terms.append(sql)
    return " ORDER BY " + ", ".join(terms)


def _count_param(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit():
        raise ApiError(400, "PGRST100", f"failed to parse {name} ({value})")
    return int(value)


# -- the server ----------------------------------------------------------------------------------


class PostgrestServer:
    """``async with PostgrestServer(dsn, api_key) as server:`` — ``server.url`` is the project URL."""

    def __init__(self, dsn: str, api_key: str, host: str = "127.0.0.1") -> None:
        self.dsn = dsn
        self.api_key = api_key
        self.host = host
        self.port = 0
        self.requests: list[str] = []  # decoded path and query of every request, for assertions
        self._pool: asyncpg.Pool | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=4)
        app = web.Application()
        app.router.add_route("*", "/rest/v1/{table}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def __aenter__(self) -> PostgrestServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(unquote(request.path_qs))
        try:
            if request.headers.get("apikey") != self.api_key:
                return web.json_response({"message": "Invalid API key"}, status=401)
            if request.method not in {"GET", "HEAD"}:
                raise _unsupported(f"{request.method} requests")
            profile = request.headers.get("Accept-Profile", SCHEMA)
            if profile != SCHEMA:
                raise ApiError(406, "PGRST106", "The schema must be one of the following: public")
            body = await self._select(request.match_info["table"], request.query)
        except ApiError as exc:
            return web.json_response(exc.body, status=exc.status)
        except asyncpg.PostgresError as exc:
            status = 404 if exc.sqlstate == "42P01" else 409 if str(exc.sqlstate).startswith("23") else 400
            return web.json_response(
                {
                    "code": exc.sqlstate,
                    "message": str(exc),
                    "details": getattr(exc, "detail", None),
                    "hint": getattr(exc, "hint", None),
                },
                status=status,
            )
        except (OSError, asyncpg.InterfaceError, asyncpg.CannotConnectNowError, TimeoutError) as exc:
            return web.json_response(
                {
                    "code": "PGRST000",
                    "message": "Database connection error",
                    "details": str(exc),
                    "hint": None,
                },
                status=503,
            )
        rows = json.loads(body)
        content_range = f"0-{len(rows) - 1}/*" if rows else "*/*"
        return web.Response(
            body=body if request.method == "GET" else b"",
            status=200,
            content_type="application/json",
            charset="utf-8",
            headers={"Content-Range": content_range},
        )

    async def _select(self, table: str, query: Any) -> bytes:
        assert self._pool is not None
        async with asyncio.timeout(10):
            async with self._pool.acquire() as conn:
                catalog = await Catalog.load(conn)
                builder = QueryBuilder(catalog)
                nodes = parse_select(query.get("select", "*"))
                t = "t0"
                where = []
                for key, value in query.items():
                    if key in _RESERVED_PARAMS:
                        continue
                    where.append(_filter(catalog, table, t, key, value))
                tail = _order(catalog, table, t, query["order"]) if "order" in query else ""
                limit = _count_param(query.get("limit"), "limit")
                offset = _count_param(query.get("offset"), "offset")
                if limit is not None:
                    tail += f" LIMIT {limit}"
                if offset is not None:
                    tail += f" OFFSET {offset}"
                if "columns" in query or "on_conflict" in query:
                    raise _unsupported("columns/on_conflict")
                sql = builder.select(table, nodes, where, alias=t, tail=tail)
                wrapped = f"SELECT coalesce(json_agg(_r), '[]'::json)::text FROM ({sql}) AS _r"
                text: str = await conn.fetchval(wrapped)
                return text.encode()
