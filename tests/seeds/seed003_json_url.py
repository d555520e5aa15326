import requests

url = "https://api.xhuoapi.ai/v1/openai/images/edits"
headers = {"accept": "application/json", "authorization": "Bearer {token}", "content-type": "application/json"}
payload = {
    "model": "gpt-image-2",
    "image": "https://platform.cdn.xhuoapi.ai/gpt-image/5c9fa635-8794-4c6d-88f8-584d7f4716c6_0.png",
    "prompt": "Convert this infographic to dark mode: dark navy background, light cream text, deep gray rounded module cards with soft shadows. Keep all layout, structure, and module arrangement identical — only invert the color scheme.",
    "size": "1024x1536",
}
response = requests.post(url, json=payload, headers=headers)
print(response.text)
