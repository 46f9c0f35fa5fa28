"""What a question needs and who is good at it: embeddings, keywords, skills, grading, profiles.

Knows nothing of HTTP or of how models are scheduled.
"""
