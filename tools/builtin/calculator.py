"""A calculator that evaluates arithmetic only: the expression's AST is walked with a
whitelist of node types, so names, calls, attributes and comprehensions are rejected
before anything runs; huge powers are refused instead of hanging."""

from __future__ import annotations

import ast
import math
import operator

from tools.registry import tool

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round, "log": math.log, "exp": math.exp}
_CONSTANTS = {"pi": math.pi, "e": math.e}
MAX_EXPONENT = 1000


def _eval(node: ast.AST):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is too large (limit {MAX_EXPONENT})")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords and len(node.args) in (1, 2)):
        return _FUNCTIONS[node.func.id](*map(_eval, node.args))
    raise ValueError(f"not allowed in an arithmetic expression: {ast.dump(node)[:60]}")


@tool
def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression.

    Args:
        expression: Arithmetic with + - * / // % **, parentheses, sqrt, abs, round, log, exp, pi and e, e.g. "2 * (3 + 4)".
    """
    if len(expression) > 500:
        raise ValueError("expression longer than 500 characters")
    return _eval(ast.parse(expression, mode="eval"))
