"""The ground floor: config schema and loading, shared types, the registry helper, the console.
Imports nothing else of the project."""
