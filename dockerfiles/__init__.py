"""dockerfiles"""
