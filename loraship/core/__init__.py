"""The small shared core: content hashes, model resolution, where files live, AWS clients.

Every layer above ``loraship.handler`` may import it; it imports nothing else of the project.
"""
