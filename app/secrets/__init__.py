"""Repo secrets: Tangled's sh.tangled.repo.{add,remove,list}Secret, stored encrypted, given to runs."""
